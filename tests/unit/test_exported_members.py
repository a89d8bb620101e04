import veris_remediate


def test_all_is_sorted_and_complete():
    exported = veris_remediate.__all__
    assert exported == sorted(exported)
    public = {name for name in dir(veris_remediate) if not name.startswith("_")}
    # Every public attribute is either exported or a submodule.
    import types

    modules = {n for n in public if isinstance(getattr(veris_remediate, n), types.ModuleType)}
    assert public - modules - {"annotations"} == set(exported)  # the __future__ import


def test_library_never_imports_click():
    import subprocess
    import sys

    code = (
        "import sys, veris_remediate; "
        "r = veris_remediate.Remediator; "
        "print('click' in sys.modules, 'ansible_runner' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
