"""Which GPUs a build of the CUDA extension fastenc._C holds code for: the cuda backend's own rule, read by its hook
(fastenc._cuda.not_supported_reasons) from the architectures setup.py compiles into the build (CUDA_ARCHS).

Apart from fastenc._cuda so that it imports without the extension (tests check it on machines with no build).

Trade-off: the rule restates how the CUDA driver picks a kernel image (cubins within a major version, PTX for any
newer device) instead of asking the driver, so that a reason exists before any kernel is launched.
"""

from __future__ import annotations


def kernel_image_reason(capability: tuple[int, int], archs: str | None) -> str | None:
    """Why a CUDA build for `archs` (e.g. "sm_80+sm_90a+compute_90": cubins and PTX) has no code for a device of
    `capability`, or None if it has. A cubin sm_XY runs on capability X.Z with Z >= Y (sm_XYa on X.Y only); PTX
    compute_XY is compiled by the driver for any capability >= X.Y. archs None (a build that does not say): None."""
    if archs is None:
        return None
    for arch in archs.replace(";", "+").split("+"):
        kind, _, num = arch.strip().partition("_")
        specific = num.endswith("a")
        num = num.rstrip("a")
        built = (int(num[:-1]), int(num[-1]))
        if kind == "sm" and built[0] == capability[0] and (built[1] == capability[1] if specific
                                                            else built[1] <= capability[1]):
            return None
        if kind == "compute" and not specific and built <= tuple(capability):
            return None
    major, minor = capability
    return (f"fastenc._C has no kernel image for sm_{major}{minor} (built for {archs}); rebuild it with "
            f"FASTENC_CUDA_ARCHS including {major}{minor}")
