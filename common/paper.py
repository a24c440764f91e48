"""The published figures of the LEAD paper, by table: Karmali et al., *LEAD: Self-Supervised Landmark Estimation
by Aligning Distributions of Feature Similarity*, WACV 2022 (arXiv:2204.02958). Every figure is for a ResNet-50
pretrained on CelebA at 96 px; errors are in % of the inter-ocular distance (IOD). The demo's report
(common/demo_report.py) and the ablation study's (experiments/ablation_report.py) print them beside ours.

Methods are named as in the paper's rows: "DVE" (Thewlis et al.; Hourglass where the paper has two), "CL"
(ContrastLandmark, Cheng et al.), "BYOL + NMF" (NMF of LEAD's stage-1 hypercolumn), "LEAD". A feature dimension
of 3840 is the hypercolumn. Only the rows this repository compares with are kept for Tables 2, 4 and 5; Tables 1,
3 and 6 are whole.
"""
from __future__ import annotations

REGRESSION_COLUMNS = ("MAFL", "AFLW_M", "AFLW_R", "300W")
ANNOTATIONS = (1, 5, 10, 20, 50, 100)                  # Table 5's numbers of labelled training faces

# Table 1: matching on MAFL, 500 same-identity and 500 different-identity pairs. (method, feat. dim) ->
# (same, different). Its caption says % IOD; the values are on the scale of DVE's pixel errors.
TABLE1 = {("DVE", 64): (0.92, 2.38), ("CL", 64): (0.92, 2.62), ("BYOL + NMF", 64): (0.84, 5.74),
          ("LEAD", 64): (0.51, 2.60), ("CL", 256): (0.71, 2.06), ("BYOL + NMF", 256): (0.91, 4.26),
          ("LEAD", 256): (0.48, 2.50), ("CL", 3840): (0.73, 6.16), ("LEAD", 3840): (0.49, 3.06)}

# Table 2: regression on all labels, the unsupervised state of the art. method -> {data set: error}
TABLE2 = {method: dict(zip(REGRESSION_COLUMNS, errors)) for method, errors in {
    "DVE": (2.86, 7.53, 6.54, 4.65), "CL": (2.44, 6.99, 6.27, 5.22), "LEAD": (2.39, 6.23, 5.65, 4.66)}.items()}

# Table 3: LEAD's stage-2 projection head, matching as Table 1. (feat. dim, head dim; 0: no head) -> (same, diff.)
TABLE3 = {(64, 0): (0.48, 2.79), (64, 64): (0.51, 2.64), (64, 256): (0.51, 2.60), (128, 256): (0.47, 2.58),
          (256, 256): (0.48, 2.50)}

# Table 4: regression by feature dimension. (method, feat. dim) -> {data set: error}
TABLE4 = {key: dict(zip(REGRESSION_COLUMNS, errors)) for key, errors in {
    ("CL", 64): (2.77, 7.21, 6.22, 5.19), ("LEAD", 64): (2.93, 6.61, 6.32, 5.32),
    ("CL", 128): (2.71, 7.14, 6.14, 5.09), ("LEAD", 128): (2.91, 6.60, 6.21, 5.41),
    ("CL", 256): (2.64, 7.17, 6.14, 4.99), ("LEAD", 256): (2.87, 6.51, 6.12, 5.37)}.items()}

# Table 5: regression on AFLW_M from few labelled faces, mean over runs (the paper's ± std left out).
# (method, feat. dim) -> {number of annotations: error}
TABLE5 = {key: dict(zip(ANNOTATIONS, errors)) for key, errors in {
    ("CL", 64): (24.87, 15.15, 13.62, 11.77, 11.57, 10.06),
    ("LEAD", 64): (21.8, 13.34, 11.50, 10.13, 9.29, 9.11)}.items()}

# Table 6: stage-1 x stage-2 objectives, regression on AFLW_M. Keyed by this repository's names: the paper's
# stage-1 "CL" is MoCo (ContrastLandmark's), its "LEAD" is BYOL. (stage 1, stage 2) -> {feat. dim: error}
TABLE6 = {key: dict(zip((64, 128, 256), errors)) for key, errors in {
    ("moco", "cl"): (7.86, 7.81, 7.31), ("moco", "lead"): (6.66, 6.58, 6.69),
    ("byol", "cl"): (7.89, 7.86, 7.41), ("byol", "lead"): (6.61, 6.60, 6.51)}.items()}
