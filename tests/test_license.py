"""The LICENSE file the package metadata declares."""
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_the_license_file_is_the_apache_2_license_pyproject_declares():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    head = [line.strip() for line in text.splitlines()[:5] if line.strip()]
    assert head[:2] == ["Apache License", "Version 2.0, January 2004"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 csap-zoo contributors" in text and "[yyyy]" not in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    license_ = project["license"]
    assert (license_["text"] if isinstance(license_, dict) else license_) == "Apache-2.0"
    # setuptools puts LICEN[CS]E* files into the sdist and the wheel unless license-files says otherwise
    listed = project.get("license-files", ["LICEN[CS]E*"])
    assert any(ROOT.glob(pattern) for pattern in listed)
