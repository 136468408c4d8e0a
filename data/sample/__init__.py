"""Deterministic synthetic sample corpus: brain MRI (NIfTI), chest CT (DICOM), chest X-ray (16-bit PNG).

`write_sample_corpus(out, n, seed, size=...)` writes exactly `n` 2-D items per modality (so 3·n items), with
ground-truth masks, class labels, a split and COCO instances. Every random draw comes from a generator seeded by
(seed, modality, item or volume index), and DICOM UIDs are hashed from the same values, so two runs with the same
(n, seed, size) write byte-identical files. Nothing here is patient data; the DICOM patient/study tags hold
fake but PHI-like values on purpose (one synthetic patient per CT series), so that the privacy path of the
readers and the scan's keyed grouping are exercised.

Layout (other components rely on it; the modality is inferred from the path tokens 'mri', 'ct', 'xray')::

    DIR/brain_mri/vol_000.nii.gz           int16 NIfTI volumes, 1 mm voxels, RAS-canonical affine, up to 4 slices;
                                           item image = np.asarray(img.dataobj)[:, :, k] as is (no transpose)
    DIR/chest_ct/series_000/slice_000.dcm  single-frame CT slices (uint16 stored values, HU = stored*slope + intercept);
                                           positions shuffled against file names (`ct_dicom.slice_positions`)
    DIR/chest_ct/scout_000.dcm ...         a localizer, a derived image, a burned-in secondary capture: excluded
                                           by `data scan` by default, not items
    DIR/chest_ct/multiframe_000.dcm        one Enhanced CT multi-frame file (int16, rescale in the shared
                                           functional groups, as the standard puts it)
    DIR/chest_xray/cxr_000.png             16-bit grey PNG radiographs, (size, size - size // 8) pixels
    DIR/truth/<item_id>.png                uint8 0/255 truth at the item's (H, W): the tumour for MR,
                                           the lungs for CT and X-ray (the ROI of their prompts)
    DIR/labels.csv                         item_id,path,frame,modality,label,split
    DIR/coco/instances.json                COCO instances: one annotation per lesion (tumour / nodule / opacity)
    DIR/reports.csv                        path,frame,report: synthetic reports for a share (`report_share`, 0.5)
                                           of each modality's non-test images (the MaskedCLIP pairs table)
    DIR/README.txt                         what this is
    DIR/.scanignore                        keeps truth/, coco/, labels.csv, README.txt, reports.csv out of `data scan`

Modules: corpus.py (assembly, and where to add a modality or an annotation), mr.py / ct.py / xr.py (one
modality each: render, write, yield items), shapes.py (noise, ellipses, lesions), writers.py and ct_dicom.py
(byte-stable files), annotations.py (splits, labels.csv, COCO, README.txt), reports.py (reports.csv), spec.py
(shared types), cli.py.
"""

from data.sample.cli import main
from data.sample.corpus import ANNOTATIONS, MAKERS, MODALITIES, MODES, CorpusMode, SampleSummary, write_sample_corpus
from data.sample.spec import README_MARKER, ModalitySpec
from data.sample.xr import xray_shape

__all__ = [
    "ANNOTATIONS",
    "MODES",
    "CorpusMode",
    "MAKERS",
    "MODALITIES",
    "README_MARKER",
    "ModalitySpec",
    "SampleSummary",
    "main",
    "write_sample_corpus",
    "xray_shape",
]
