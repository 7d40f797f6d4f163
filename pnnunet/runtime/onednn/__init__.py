"""oneDNN through the library bundled in Paddle's CPU wheel, split by job: :mod:`.capi` (ctypes
binding of the C API), :mod:`.primitives` (cached convolution primitives, the bf16 probe) and
:mod:`.layers` (Paddle layers and the PyLayer that use them)."""
