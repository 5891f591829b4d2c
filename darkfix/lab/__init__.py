"""darkfix's lab: synthetic data, benchmark sets, training, evaluation and timing, apart from the product.

Installed with the `lab` extra (`pip install "darkfix[lab]"`, for MS-SSIM); the product (`darkfix restore`,
`darkfix batch`, `darkfix.restore`) never imports it.
"""
