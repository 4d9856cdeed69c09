"""corun: CORUN + Colabator real-world image dehazing (Fang et al., NeurIPS 2024).

    import corun
    model = corun.CORUN(depth=4)
    corun.load_checkpoint(model, "CORUN.pth")        # the authors' file or one of ours
    out = model(x)                                   # out.image, out.stages, out.transmissions
    corun.dehaze("photo.jpg", model=model).save("photo_dehazed.png")
"""
__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .inference import dehaze, run_model
from .model import CORUN, CORUNConfig, CORUNOutput, sgdm, tgdm

__all__ = [
    "CORUN", "CORUNConfig", "CORUNOutput", "tgdm", "sgdm",
    "load_checkpoint", "load_model", "save_checkpoint", "CheckpointError",
    "dehaze", "run_model",
]
