"""Short synthetic reports for a share of the sample corpus's images: `reports.csv` (path, frame, report).

What a report says comes from what the generator drew: the modality, the finding or its absence, and for each
lesion (in the order drawn) where its centroid lies, in the patient's terms:

    MR  brain_mri    the item array is the canonical RAS+ slice (`data.readers`: rows = x, towards the patient's
                     Right; columns = y, towards Anterior). Side: which side of the head's midline (the drawn
                     head ellipse's axis, rotation included) the centroid lies on, larger rows = right. Lobe along
                     the head's antero-posterior axis: anterior third of the head frontal, posterior third
                     occipital, parietal between.
    CT  chest_ct     displayed as radiologists read axial CT (rows anterior to posterior, image left = patient
                     right): side from the centroid's column against the middle of the lungs' extent (the truth
                     mask), anterior / posterior from its row against the middle of the lungs' rows.
    XR  chest_xray   PA radiograph (rows head to feet, image left = patient right): side as CT; upper, middle or
                     lower zone from the thirds of the lungs' rows.

Each report is one of a few phrasings (which one, and which images get a report, is drawn from the seed), so the
output stays deterministic. Which images: `share` of each modality's non-test images (round(share x count));
test-split images never get one, as a report names the finding and would carry the test labels into pretraining.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

from data.sample.spec import Item, SampleCorpus, item_rng

REPORTS_CSV = "reports.csv"
REPORT_SHARE = 0.5  # default share of each modality's non-test images with a report
PICK_KIND, PHRASE_KIND = 4, 5  # item_rng kinds: which items get a report; the phrasing of one item's report

# (modality code, positive) -> phrasings; {finding} is "a <noun> in <place>" or "<nouns> in <place> and <place>"
PHRASES: dict[tuple[str, bool], tuple[str, ...]] = {
    ("MR", True): (
        "MRI of the brain: {finding}.",
        "Axial brain MR showing {finding}.",
        "Findings: {finding} on MR imaging of the head.",
    ),
    ("MR", False): (
        "MRI of the brain: no focal lesion.",
        "Axial brain MR. No mass or abnormal signal.",
        "Normal MR appearance of the brain; no tumor seen.",
    ),
    ("CT", True): (
        "CT of the chest: {finding}.",
        "Chest CT shows {finding}.",
        "Axial CT of the thorax. Findings: {finding}.",
    ),
    ("CT", False): (
        "CT of the chest: lungs clear, no nodule.",
        "Chest CT without pulmonary nodules.",
        "Axial CT of the thorax. No focal lung lesion.",
    ),
    ("XR", True): (
        "Chest radiograph: {finding}.",
        "PA chest X-ray shows {finding}.",
        "Frontal chest film. Findings: {finding}.",
    ),
    ("XR", False): (
        "Chest radiograph: clear lungs, no focal opacity.",
        "PA chest X-ray: no consolidation or opacity.",
        "Frontal chest film within normal limits.",
    ),
}
# (singular, plural) nouns per modality, one pair drawn per report
NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "MR": (("mass", "masses"), ("lesion", "lesions"), ("tumor", "tumors")),
    "CT": (("nodule", "nodules"), ("pulmonary nodule", "pulmonary nodules")),
    "XR": (("opacity", "opacities"), ("focal opacity", "focal opacities")),
}

NUMBERS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class Location:
    """Where one lesion lies, in the patient's terms: side 'left' | 'right', and a region word."""

    side: str
    region: str

    def place(self, modality: str) -> str:
        """The location phrase: 'the left frontal lobe', 'the posterior right lung', 'the right upper zone'."""
        if modality == "MR":
            return f"the {self.side} {self.region} lobe"
        if modality == "CT":
            return f"the {self.region} {self.side} lung"
        return f"the {self.side} {self.region} zone"


def lesion_locations(item: Item) -> list[Location]:
    """The location of each lesion of `item`, in the order drawn (see the module docstring for the conventions)."""
    code, anatomy = item.modality.code, item.rendered.anatomy
    rows, cols = np.nonzero(item.rendered.truth_hw)  # the lungs (CT, XR)
    spans = ((rows.min(), rows.max()), (cols.min(), cols.max())) if rows.size else ((0, 1), (0, 1))
    locations = []
    for lesion_hw in item.rendered.lesions:
        r, c = (float(v.mean()) for v in np.nonzero(lesion_hw))  # the centroid
        if code == "MR":
            if anatomy is None:
                raise ValueError(f"{item.relpath}: an MR slice needs the head's anatomy for its report")
            u, v = anatomy.axes(r, c)  # along the head's left-right and posterior-anterior axes, -1..1
            lobe = "frontal" if v > 1 / 3 else "occipital" if v < -1 / 3 else "parietal"
            locations.append(Location("right" if u > 0 else "left", lobe))
            continue
        # CT, XR: the centroid as a fraction of the lungs' extent, 0 = their first row / column, 1 = the last
        fr, fc = ((x - lo) / max(float(hi - lo), 1.0) for x, (lo, hi) in zip((r, c), spans, strict=True))
        if code == "CT":
            locations.append(Location("right" if fc < 0.5 else "left", "anterior" if fr < 0.5 else "posterior"))
        else:
            zone = "upper" if fr < 1 / 3 else "lower" if fr > 2 / 3 else "middle"
            locations.append(Location("right" if fc < 0.5 else "left", zone))
    return locations


def write_report(item: Item, rng: np.random.Generator) -> str:
    """One report of `item`: a phrasing of its modality and finding, its lesions' locations filled in."""
    code = item.modality.code
    phrasings = PHRASES[(code, item.positive)]
    template = phrasings[int(rng.integers(len(phrasings)))]
    if not item.positive:
        return template
    singular, plural = NOUNS[code][int(rng.integers(len(NOUNS[code])))]
    places = list(dict.fromkeys(location.place(code) for location in lesion_locations(item)))  # each place once
    n_lesions = len(item.rendered.lesions)
    if n_lesions == 1:
        finding = f"{'an' if singular[0] in 'aeiou' else 'a'} {singular} in {places[0]}"
    elif len(places) == 1:
        finding = f"{NUMBERS.get(n_lesions, n_lesions)} {plural} in {places[0]}"
    else:
        finding = f"{NUMBERS.get(n_lesions, n_lesions)} {plural} in {', '.join(places[:-1])} and {places[-1]}"
    return template.format(finding=finding)


def reported_items(corpus: SampleCorpus, share: float) -> list[int]:
    """Indices (into corpus.items) of the items with a report: per modality, round(share x its non-test items),
    drawn from the seed; sorted."""
    chosen: list[int] = []
    for spec in corpus.modalities:
        members = [
            i
            for i, (item, split) in enumerate(zip(corpus.items, corpus.splits, strict=True))
            if item.modality is spec and split != "test"
        ]
        order = item_rng(corpus.seed, spec, PICK_KIND, 0).permutation(len(members))
        chosen += [members[j] for j in order[: int(round(share * len(members)))]]
    return sorted(chosen)


def write_reports(corpus: SampleCorpus) -> None:
    """reports.csv: path, frame, report for the items of `reported_items` (a header only when none)."""
    with (corpus.root / REPORTS_CSV).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "frame", "report"])
        for i in reported_items(corpus, corpus.report_share):
            item = corpus.items[i]
            index = sum(
                other.modality is item.modality for other in corpus.items[:i]
            )  # the item's index in its modality
            rng = item_rng(corpus.seed, item.modality, PHRASE_KIND, index)
            writer.writerow([item.relpath, item.frame, write_report(item, rng)])
