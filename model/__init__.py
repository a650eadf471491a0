"""gliomaseg model: 3D U-Net for glioma segmentation (BraTS regions), training, inference, bundles."""
