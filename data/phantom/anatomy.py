"""Published anatomy and CT values the phantom is built from: one table per quantity,
each with its source. Lengths in mm, angles in degrees, densities in mg/cm^3, CT numbers
in HU (120 kVp).

Where a value below is read from a paper's table or figure it is rounded to 0.5 mm;
``*_SD`` gives the between-subject standard deviation used for the per-seed variation and
by the tests' acceptance ranges (mean +- 2.5 SD, times the per-seed size factor).
"""

from __future__ import annotations

__all__ = [
    "BMD_RANGE",
    "CORTEX_MM",
    "DISC_LABEL",
    "FEATURE_PREVALENCE",
    "GENANT_GRADES",
    "LEVEL_NAMES",
    "LEVELS",
    "METAL_HU",
    "SACRUM_LABEL",
    "SIZE_SD",
    "TISSUE_HU",
    "VERTEBRA",
    "VERTEBRA_SD",
    "hu_from_bmd",
]

DISC_LABEL = 100
"""Label of every intervertebral disc in the phantom's label map."""

SACRUM_LABEL = 26
"""VerSe label of the sacrum (S1-S5, one label)."""

LEVEL_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 6)},
    SACRUM_LABEL: "S1",
}
"""VerSe label id -> level name."""

LEVELS = list(range(3, 25)) + [SACRUM_LABEL]
"""Levels drawn, top to bottom: C3 .. L5, then the sacrum."""

# --- vertebrae -------------------------------------------------------------------------------

_COLUMNS = (
    "body_w",  # upper endplate width EPWu (X)
    "body_d",  # upper endplate depth EPDu (Y)
    "body_hp",  # posterior vertebral body height VBHp (Z)
    "body_ha",  # anterior vertebral body height VBHa
    "ped_w",  # pedicle width PDW (transverse, outer cortex to outer cortex)
    "ped_h",  # pedicle height PDH
    "canal_w",  # spinal canal width SCW (interpedicular)
    "canal_d",  # spinal canal depth SCD (mid-sagittal)
    "disc_h",  # mid-sagittal height of the disc below this level
)
_ROWS: dict[int, tuple[float, ...]] = {
    # Cervical C3-C7: Panjabi et al., Spine 1991;16:861-869 (cervical), rounded.
    3: (16.0, 15.5, 14.0, 13.5, 5.5, 7.0, 23.5, 14.0, 5.0),
    4: (17.0, 15.5, 13.5, 13.0, 5.5, 7.0, 24.5, 14.0, 5.0),
    5: (18.0, 16.0, 13.5, 13.0, 5.5, 7.0, 25.0, 14.0, 5.5),
    6: (20.0, 16.5, 13.5, 13.0, 6.0, 7.0, 25.0, 14.0, 5.5),
    7: (22.5, 17.0, 15.0, 14.5, 6.5, 7.5, 24.0, 14.5, 4.5),
    # Thoracic T1-T12: Panjabi et al., "Thoracic human vertebrae: quantitative
    # three-dimensional anatomy", Spine 1991;16:888-901; pedicle widths also Zindrick et
    # al., Spine 1987;12:160-166 (narrowest T4-T6, ~4.5 mm). Discs: ~4-7 mm (Kunkel et al.,
    # J Anat 2010;216:320).
    8: (26.5, 16.5, 15.0, 14.0, 7.5, 9.5, 20.5, 14.5, 4.0),
    9: (26.0, 18.0, 16.5, 15.5, 6.5, 11.0, 17.0, 15.0, 4.0),
    10: (26.5, 20.0, 17.0, 16.0, 5.0, 11.5, 16.0, 14.5, 4.0),
    11: (27.0, 22.0, 17.5, 16.5, 4.5, 11.5, 15.5, 14.5, 4.0),
    12: (28.0, 24.0, 18.0, 17.0, 4.5, 11.5, 15.0, 15.0, 4.5),
    13: (29.0, 26.0, 18.5, 17.5, 5.0, 12.0, 15.0, 15.0, 4.5),
    14: (30.0, 27.0, 19.0, 18.0, 5.5, 12.0, 15.5, 15.0, 5.0),
    15: (31.5, 28.5, 20.0, 19.0, 6.0, 12.5, 15.5, 15.0, 5.0),
    16: (33.0, 29.5, 20.5, 19.5, 6.0, 13.5, 16.0, 15.0, 5.5),
    17: (35.5, 30.0, 21.5, 20.5, 6.5, 15.0, 17.0, 15.5, 6.0),
    18: (38.0, 30.5, 22.5, 21.5, 7.5, 16.5, 19.0, 16.5, 6.5),
    19: (40.0, 31.5, 24.0, 23.0, 7.5, 16.0, 21.0, 17.0, 7.5),
    # Lumbar L1-L5: Panjabi et al., "Human lumbar vertebrae: quantitative three-dimensional
    # anatomy", Spine 1992;17:299-306; Zhou et al., "Geometrical dimensions of the lower
    # lumbar vertebrae - analysis of data from digitised CT images", Eur Spine J
    # 2000;9:242-248 (VBHa, VBHp, disc heights); pedicle widths Zindrick et al. 1987
    # (L1 8.7, L2 8.9, L3 10.3, L4 12.9, L5 18.0 mm).
    20: (41.5, 32.5, 26.0, 25.0, 8.5, 15.5, 23.0, 17.5, 9.0),
    21: (43.5, 33.5, 26.5, 26.0, 9.0, 15.0, 23.5, 17.0, 10.0),
    22: (45.5, 34.5, 26.5, 26.5, 10.5, 15.0, 24.0, 16.0, 11.0),
    23: (47.5, 35.0, 26.0, 26.5, 13.0, 14.5, 24.5, 16.0, 11.5),
    24: (49.5, 35.5, 25.0, 27.5, 17.5, 14.0, 27.0, 17.0, 11.0),
    # S1 (first sacral body; its disc column is unused).
    SACRUM_LABEL: (50.0, 36.0, 29.0, 30.0, 16.0, 18.0, 26.0, 13.0, 0.0),
}
VERTEBRA: dict[int, dict[str, float]] = {
    lv: dict(zip(_COLUMNS, row)) for lv, row in _ROWS.items()
}
"""Mean adult dimensions per level (VerSe label -> column -> mm)."""

VERTEBRA_SD: dict[str, float] = {
    "body_w": 3.0, "body_d": 2.5, "body_hp": 1.5, "body_ha": 1.5, "ped_w": 1.5, "ped_h": 1.5,
    "canal_w": 2.0, "canal_d": 1.5, "disc_h": 1.5,
}  # fmt: skip
"""Between-subject SD of each column (Panjabi 1991/1992 report SEs of 0.3-1.0 mm over 12
spines, i.e. SDs of about 1-3.5 mm)."""

SIZE_SD = 0.05
"""SD of the per-seed size factor applied to every length (stature; clipped at +-2.4 SD)."""

# Posterior elements not tabulated above (same sources; shapes interpolated between levels).
POSTERIOR: dict[int, dict[str, float]] = {
    # level: lamina thickness, spinous process length, its downward slope (deg), height,
    # transverse process length (from the lamina), backward angle (deg), thickness
    3: dict(lam_t=3.0, sp_len=14.0, sp_incl=15.0, sp_h=6.0, tp_len=10.0, tp_back=0.0, tp_t=6.0),
    7: dict(lam_t=4.0, sp_len=22.0, sp_incl=25.0, sp_h=8.0, tp_len=15.0, tp_back=10.0, tp_t=7.0),
    8: dict(lam_t=5.0, sp_len=30.0, sp_incl=35.0, sp_h=8.0, tp_len=20.0, tp_back=30.0, tp_t=9.0),
    13: dict(lam_t=5.0, sp_len=35.0, sp_incl=55.0, sp_h=8.0, tp_len=22.0, tp_back=35.0, tp_t=9.0),
    19: dict(lam_t=6.0, sp_len=30.0, sp_incl=25.0, sp_h=14.0, tp_len=12.0, tp_back=25.0,
             tp_t=8.0),
    20: dict(lam_t=7.0, sp_len=30.0, sp_incl=12.0, sp_h=16.0, tp_len=18.0, tp_back=5.0, tp_t=7.0),
    22: dict(lam_t=7.0, sp_len=30.0, sp_incl=8.0, sp_h=18.0, tp_len=25.0, tp_back=0.0, tp_t=7.0),
    24: dict(lam_t=7.0, sp_len=25.0, sp_incl=5.0, sp_h=16.0, tp_len=20.0, tp_back=0.0, tp_t=9.0),
    SACRUM_LABEL: dict(lam_t=7.0, sp_len=12.0, sp_incl=20.0, sp_h=12.0, tp_len=30.0,
                       tp_back=15.0, tp_t=24.0),
}  # fmt: skip

CORTEX_MM = (0.25, 0.5)
"""Thickness of the vertebral body's cortical shell: 0.35 mm on average, porous, in L1
(Silva et al., Bone 1994;15:409-414); 244-290 um (thoracic/lumbar means), thinner in
osteoporosis (Ritzel et al., J Bone Miner Res 1997;12:89-95). Drawn per seed, thinner
with lower BMD."""

# --- sagittal and coronal alignment ----------------------------------------------------------

LORDOSIS_DEG = (20.0, 60.0)
"""Lumbar lordosis (Cobb, T12/L1-S1). Recumbent 36.8 +- 13.2 deg, standing 49.8 +- 11.2 deg,
70-85% of it at L4-S1, in 627 asymptomatic volunteers (Asian Spine J 2019, PMC6680033)."""
LORDOSIS_SHARE = (0.07, 0.11, 0.17, 0.27, 0.38)
"""Share of the lordosis per segment L1-2 .. L5-S1 (same source: L4-S1 about 65-85%)."""
KYPHOSIS_DEG = (20.0, 50.0)
"""Thoracic kyphosis T4-T12 (Cobb): normal 20-40 deg in young adults, up to ~50 deg in
older adults (Fon et al., AJR 1980;134:979-983)."""
CERVICAL_LORDOSIS_DEG = (5.0, 30.0)
SCOLIOSIS_COBB_DEG = (10.0, 40.0)
"""Cobb angle of a structural curve when a seed has scoliosis (10 deg defines scoliosis;
adult degenerative curves are mostly 10-40 deg); otherwise a 0-6 deg asymmetry."""
APICAL_ROTATION_PER_COBB = 0.3
"""Axial rotation of the apical vertebra per degree of Cobb angle (about 1/3: Perdriolle
& Vidal; Stokes et al., Spine 1986;11:213), toward the convexity."""

# --- bone density ----------------------------------------------------------------------------

BMD_RANGE = (50.0, 250.0)
"""Trabecular volumetric BMD by QCT, mg/cm^3 (calcium hydroxyapatite): osteoporosis < 80,
low bone mass 80-120, normal > 120 (ACR-SPR-SSR practice parameter for QCT, 2018); young
adults about 180-220."""


def hu_from_bmd(bmd: float) -> float:
    """Trabecular CT number (HU, 120 kVp) of trabecular bone of QCT density ``bmd``:
    HU = 1.1 BMD + 10. Chosen so that young adults (QCT ~190-200 mg/cm^3) land at the
    226 +- 44 HU L1 attenuation of adults < 30 years and the oldest at 89 +- 38 HU (Jang et
    al., Radiology 2019;291:360-367, 20,374 CTs at 120 kV), consistent with Pickhardt et
    al., Ann Intern Med 2013;158:588 (L1 <= 110 HU: osteoporosis likely; > 160 HU: unlikely).
    """
    return 1.1 * float(bmd) + 10.0


# --- tissues ---------------------------------------------------------------------------------

TISSUE_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "lung": (-880.0, -820.0),  # inspiration, healthy (Gevenois et al., AJRCCM 1995)
    "fat": (-115.0, -85.0),  # subcutaneous / visceral fat (Lamba et al., AJR 2014;203:1013)
    "muscle": (40.0, 60.0),  # paraspinal, psoas (Lamba 2014; lower with fatty infiltration)
    "liver": (52.0, 65.0),  # unenhanced (Lamba 2014; Park et al., Radiology 2006;239:105)
    "spleen": (42.0, 52.0),  # liver - spleen 1-18 HU (Park 2006)
    "kidney": (28.0, 38.0),  # unenhanced renal parenchyma (Lamba 2014)
    "blood": (35.0, 50.0),  # unenhanced aorta / IVC
    "organ": (30.0, 45.0),  # bowel wall, heart muscle, pancreas
    "fluid": (0.0, 20.0),  # bowel content, bladder
    "faeces": (-60.0, 40.0),  # stool matrix between gas bubbles
    "csf": (0.0, 15.0),
    "cord": (28.0, 40.0),
    "disc": (70.0, 110.0),  # annulus; nucleus 10-25 HU lower when healthy
    "cartilage": (90.0, 160.0),  # costal cartilage, uncalcified
    "cortical": (1500.0, 1900.0),  # dense compact bone (Schneider et al., PMB 1996;41:111)
    "table": (100.0, 400.0),  # carbon-fibre / plastic couch shell
}
"""HU range of each tissue (120 kVp, unenhanced). Per seed one value is drawn in each
range; bone: trabecular from :func:`hu_from_bmd`, cortical from the ``cortical`` range."""

CONTRAST_HU: dict[str, dict[str, tuple[float, float]]] = {
    # Iodinated contrast (e.g. Bae, Radiology 2010;256:32): arterial phase aorta 250-400 HU,
    # portal-venous phase aorta 150-200, liver 100-120, kidneys 150-200 (nephrographic).
    "arterial": dict(artery=(250.0, 400.0), vein=(60.0, 120.0), liver=(65.0, 85.0),
                     spleen=(90.0, 130.0), kidney=(130.0, 180.0), heart=(250.0, 380.0)),
    "venous": dict(artery=(150.0, 200.0), vein=(130.0, 180.0), liver=(100.0, 125.0),
                   spleen=(110.0, 130.0), kidney=(150.0, 200.0), heart=(140.0, 190.0)),
}  # fmt: skip

CALCIFICATION_HU = (300.0, 1000.0)
"""Aortic wall calcifications: small plaques, 300-1000 HU at 2 mm (partial volume of
denser calcium); prevalence rises with age."""

METAL_HU = 10000.0
"""Titanium alloy (Ti-6Al-4V, 4.43 g/cm^3) on an extended CT scale: mu/rho ~0.49 cm^2/g at
an effective 70 keV (NIST XCOM; photoelectric part scaled from iron), mu ~2.2/cm, 11 times
water's 0.193/cm: ~10,000 HU. A 12-bit scanner clips this at 3071 HU (pass ``metal_hu``
to draw that instead)."""

GENANT_GRADES: dict[int, tuple[float, float]] = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.60)}
"""Height loss (fraction of the expected height) of the Genant semi-quantitative grades:
1 mild 20-25%, 2 moderate 25-40%, 3 severe > 40% (Genant et al., J Bone Miner Res
1993;8:1137-1148)."""

SCREW = dict(diameter=(5.5, 7.5), length=(35.0, 55.0), rod_diameter=(5.5, 6.0),
             convergence_deg={20: 8.0, 22: 12.0, 24: 22.0, 14: 6.0, 8: 12.0})  # fmt: skip
"""Pedicle screws: diameter 5.5-7.5 mm, length 35-55 mm, medial convergence following the
pedicles' transverse angle (about 5-10 deg thoracic, 10 deg at L1 to 25-30 deg at L5:
Zindrick 1987; Panjabi 1992); rods 5.5-6.0 mm over 2-4 levels."""

BODY = dict(
    width=(280.0, 380.0),  # lateral width of the abdomen at L3 (skin to skin)
    depth=(180.0, 300.0),  # AP depth at L3
    fat=(5.0, 40.0),  # subcutaneous fat thickness (abdomen)
)
"""Adult trunk sizes at L3. The effective abdominal diameter sqrt(AP x LAT) of adult CT
patients runs from 238 mm (1st decile) through 300 mm (5th) to about 380 mm (10th) in
~750,000 CTs (Eur Radiol 2024;34:2394, Table 3); the lateral width exceeds the AP depth
by a factor of about 1.2-1.4 (AAPM Report 204, 2011). Subcutaneous fat 5-40 mm."""

ORGANS = dict(
    kidney=(110.0, 55.0, 40.0),  # length, width, thickness (mm): 10-12 cm long
    liver_span=(140.0, 170.0),  # craniocaudal span of the right lobe
    spleen=(110.0, 70.0, 45.0),  # length, width, thickness
    aorta_diameter=(18.0, 25.0),  # infrarenal 15-24 mm; thoracic descending 20-30 mm
    ivc_diameter=(18.0, 26.0),
    psoas_radius_l4=(16.0, 26.0),  # CSA 8-20 cm^2 per side at L4
    heart=(120.0, 90.0, 95.0),
)
"""Organ sizes (adult means; ranges in radiology texts, e.g. Moller & Reif, Pocket Atlas of
Sectional Anatomy)."""

FEATURE_PREVALENCE: dict[str, float] = {
    "metal": 0.20,  # pedicle screws and rods
    "fracture": 0.15,  # at least one compression fracture (Genant grade 1-3)
    "degeneration": 0.50,  # disc height loss, osteophytes, endplate sclerosis, vacuum
    "contrast": 0.40,  # of which 3/4 portal-venous, 1/4 arterial phase
    "calcification": 0.35,  # aortic wall plaques
    "table": 0.60,  # CT couch under the back
    "arms": 0.15,  # arms down beside the body
    "scoliosis": 0.15,  # Cobb angle 10-40 deg (else 0-6 deg)
}
"""Probability of each feature in a phantom drawn with ``options=None`` (training data);
each feature has its own random stream, so forcing one changes no other draw."""
