"""Measures shared by training, inference, the tools and the benchmarks: the lowest floor of the repository.

Modules here import only numpy, torch (torchvision) and OpenCV, never another room of the repository, so any room may use them.

* ``quality``: image quality, PSNR and SSIM (the published VFI protocols, and the batched PSNR of validation).
* ``shots``: frame-difference scores, shot boundaries (cuts) and duplicate frames.
* ``motion``: DIS optical-flow motion statistic, motion buckets and the classical DIS interpolation baseline.
* ``visualize``: images for people: the optical-flow colour wheel and the labelled sample grids (TensorBoard,
  the benchmarks' ``--save_images``).
"""
