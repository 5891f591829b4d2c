"""darkfix: restore extremely dark Bayer raw photos into clean sRGB PNGs (Lamba & Mitra, CVPR 2021)."""

__version__ = "0.1.0"
