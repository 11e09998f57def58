"""The SHA-256 of the chat page's sources (what build.sh built dist/ from): one line, `<hex>  sources`."""

import hashlib
from pathlib import Path

ROOT = Path(__file__).parent
FILES = [
    "package.json",
    "package-lock.json",
    "index.html",
    "vite.config.js",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*") if p.is_file()),
]

digest = hashlib.sha256()
for name in FILES:
    digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
print(f"{digest.hexdigest()}  sources")
