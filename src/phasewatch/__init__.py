"""phasewatch: segmentation and phase statistics of micrographs, beside the microscope."""

__version__ = "0.2.0"
