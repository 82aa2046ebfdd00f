"""Anatomical label tables shared by models, pipelines and the Slicer bridge (no torch here:
the Slicer process imports this)."""

# The 8 BTCV organs of the NEMESIS paper's organ-presence task, in the paper's column order:
# (name, BTCV label index, RGB colour, SNOMED CT code, code meaning).
BTCV_ORGANS = [
    ("aorta", 8, (0.84, 0.18, 0.14), "15825003", "Aorta"),
    ("gallbladder", 4, (0.55, 0.71, 0.24), "28231008", "Gallbladder"),
    ("spleen", 1, (0.62, 0.33, 0.60), "78961009", "Spleen"),
    ("left kidney", 3, (0.73, 0.50, 0.36), "18639004", "Left kidney"),
    ("right kidney", 2, (0.85, 0.62, 0.46), "9846003", "Right kidney"),
    ("liver", 6, (0.87, 0.51, 0.28), "10200004", "Liver"),
    ("stomach", 7, (0.85, 0.73, 0.55), "69695003", "Stomach"),
    ("pancreas", 11, (0.97, 0.83, 0.50), "15776009", "Pancreas"),
]
