"""Training: the published recipes (Xue 2020 ResUNet, DAUGS 2024 patch U-Net), batched augmentation, sample sources
(on-the-fly phantom or labelled folders) and a resumable trainer. Pool building lives in PerfusionDAUGSLib.pool_training.
"""
