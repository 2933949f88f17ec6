"""What every picture does last: a title, a tight layout, PNG bytes, the figure closed."""

from __future__ import annotations

import io
from typing import Optional


def png_bytes(fig, title: Optional[str] = None, dpi: int = 90) -> bytes:
    """`fig` as PNG bytes (closed afterwards, so long runs that redraw it do not leak figures)."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()
