"""The data layer's names, light to import: the command line's choices and help read them without loading
`datasets`, and the modules of the data layer take them from here rather than from the package, which imports
those modules."""

FORMATS = ("celeba", "mafl", "aflw_m", "aflw_r", "300w", "cub", "mtfl", "ptsfolder", "imagefolder")   # READERS' keys
SYNTHETIC_SPLITS = {"pretrain": 5000, "train": 1000, "val": 300, "test": 500}
