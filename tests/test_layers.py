"""The package's layers (see ``ecgcmr/__init__.py``): core and satellites apart.

Every ``import`` / ``from`` statement of every module under ``ecgcmr/`` (including those inside
functions) is read with ``ast``; a failure names the module, the line and what it imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ecgcmr"

# The layers, once. An entry ending in "." is a package (everything under it).
CORE = ("ecgcmr", "ecgcmr.models.", "ecgcmr.data.", "ecgcmr.losses", "ecgcmr.train",
        "ecgcmr.pretrain", "ecgcmr.distributed", "ecgcmr.config", "ecgcmr.constants",
        "ecgcmr.errors", "ecgcmr.files", "ecgcmr.parallel", "ecgcmr.methods", "ecgcmr.stages")
STUDY = ("ecgcmr.evaluate.", "ecgcmr.ecg_measurements", "ecgcmr.plots", "ecgcmr.html_report",
         "ecgcmr.predict", "ecgcmr.pretrained", "ecgcmr.trunk_cache")
APP = ("ecgcmr.cli", "ecgcmr.runs", "ecgcmr.publish", "ecgcmr.__main__")
SATELLITES = ("ecgcmr.synth.", "ecgcmr.convert.", "ecgcmr.manifests.")
LAYERS = {"core": CORE, "study": STUDY, "app": APP, "satellite": SATELLITES}
#: What each layer may not import.
FORBIDDEN = {"core": ("satellite", "app"), "study": ("satellite", "app"), "satellite": ("app",),
             "app": ()}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str | None:
    for layer, members in LAYERS.items():
        for m in members:
            if module == m or (m.endswith(".") and (module + ".").startswith(m)):
                return layer
    return None


def _runtime_nodes(node: ast.AST) -> list[ast.AST]:
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:`` (never run)."""
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING",
                                                                      "typing.TYPE_CHECKING"):
            children: list[ast.AST] = list(child.orelse)
        else:
            children = [child]
        for c in children:
            out += [c, *_runtime_nodes(c)]
    return out


def _imports(module: str) -> list[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` for every import in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                # `from ecgcmr import distributed` imports a module, not a name
                found.append((node.lineno, sub, None) if sub in MODULES
                             else (node.lineno, base, a.name))
    return [f for f in found if f[1] == "ecgcmr" or f[1].startswith("ecgcmr.")]


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if _layer(m) is None] == [], "add new modules to a layer above"


def test_no_import_runs_back_up() -> None:
    bad = []
    for module in MODULES:
        forbidden = FORBIDDEN.get(_layer(module) or "", ())  # no layer: the test above fails
        for line, target, _ in _imports(module):
            if _layer(target) in forbidden:
                bad.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: "
                           f"{_layer(module)} module {module} imports {_layer(target)} {target}")
    assert bad == [], "\n".join(dict.fromkeys(bad))  # one line per statement


def test_no_private_names_imported_from_another_module() -> None:
    bad = [f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {module} imports "
           f"{target}.{name}"
           for module in MODULES for line, target, name in _imports(module)
           if name and name.startswith("_") and not name.endswith("__") and target != module]
    assert bad == [], "\n".join(bad)


def test_imports_resolve_to_modules() -> None:
    # the checks above are only as good as the resolution of imports: one of each kind
    assert _layer("ecgcmr.synth.cohort") == "satellite" and _layer("ecgcmr") == "core"
    assert _layer("ecgcmr.data.cmr") == "core" and _layer("ecgcmr.runs") == "app"
    assert _layer("ecgcmr.synthesis") is None
    imports = _imports("ecgcmr.cli")
    assert any(t == "ecgcmr.distributed" and n is None for _, t, n in imports)  # in a function


def test_profiles_load_without_the_generator_or_the_trainer() -> None:
    code = ("import sys, ecgcmr.config; print(sorted(m for m in sys.modules "
            "if m.split('.')[:2] == ['ecgcmr', 'synth'] or m == 'ecgcmr.train'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout

