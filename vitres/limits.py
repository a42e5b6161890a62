"""Input limits shared by the server and the commands (no dependencies, so that settings
modules can name them without loading PyTorch)."""

#: Pixels (height x width) above which an image is refused before decoding: the server's
#: default and every command's (a 4096 x 4096 photo fits; a "decompression bomb" does not)
DEFAULT_MAX_PIXELS = 4096 * 4096

__all__ = ["DEFAULT_MAX_PIXELS"]
