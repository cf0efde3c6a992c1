"""The model catalog: resolution, Hugging Face aliases, errors naming what exists."""

from __future__ import annotations

import pytest

from render_gateway.catalog import (
    Catalog,
    CatalogError,
    CatalogModel,
    FormatNotOffered,
    SizeNotOffered,
)

SCHNELL = CatalogModel(
    "image", "flux", "schnell", ("t2i", "i2i"), aliases=("black-forest-labs/FLUX.1-schnell",)
)
WAN = CatalogModel("video", "wan", "default", ("t2v", "i2v"), status="preview")
SOON = CatalogModel("image", "qwen", "edit", ("edit",), status="coming_soon")
CATALOG = Catalog([SCHNELL, WAN, SOON])


def test_resolve_by_name_and_by_hugging_face_id() -> None:
    assert CATALOG.resolve("image", "flux", "schnell", "t2i") is SCHNELL
    assert CATALOG.resolve("image", "black-forest-labs", "FLUX.1-schnell", "i2i") is SCHNELL
    assert CATALOG.resolve("video", "wan", "default", "i2v") is WAN


@pytest.mark.parametrize(
    ("modality", "family", "model", "task", "message"),
    [
        ("image", "flux", "dev", "t2i", "no image model flux/dev"),
        ("video", "flux", "schnell", "t2v", "no video model flux/schnell"),
        ("image", "flux", "schnell", "edit", "does not do task 'edit'"),
        ("image", "qwen", "edit", "edit", "it is coming_soon"),
    ],
)
def test_unknown_models_and_tasks_name_what_exists(
    modality: str, family: str, model: str, task: str, message: str
) -> None:
    with pytest.raises(CatalogError, match=message) as error:
        CATALOG.resolve(modality, family, model, task)
    assert error.value.known


def test_matrix_and_aliases() -> None:
    matrix = CATALOG.matrix()
    assert [m["model"] for m in matrix["image"]] == ["schnell", "edit"]
    assert matrix["video"][0]["status"] == "preview"
    assert CATALOG.aliases() == {
        "black-forest-labs/FLUX.1-schnell": {
            "modality": "image",
            "family": "flux",
            "model": "schnell",
        }
    }


def test_invalid_catalogs_are_refused() -> None:
    with pytest.raises(ValueError, match="not a image task"):
        CatalogModel("image", "flux", "x", ("t2v",))
    with pytest.raises(ValueError, match="appears twice"):
        Catalog([SCHNELL, SCHNELL])
    with pytest.raises(ValueError, match="org/name"):
        Catalog([CatalogModel("image", "a", "b", ("t2i",), aliases=("nohyphen",))])
    with pytest.raises(ValueError, match="unknown default_format"):
        CatalogModel("image", "a", "b", ("t2i",), default_format="720p")


# ---------------------------------------------------------------- checked against backends

SD = CatalogModel("image", "sd", "tiny", ("t2i", "i2i", "edit"), default_format="1024")
CLIP = CatalogModel("video", "sd", "clip", ("t2v",), default_format="480p")


def worker_metadata(**parameters: object) -> dict[str, object]:
    """A reference worker's GET /v2/models/{m} body (docs/WORKER.md)."""
    return {"name": "demo", "platform": "diffusers", "parameters": parameters}


DEMO_METADATA = worker_metadata(
    tasks="edit,i2i,t2i", sized_tasks="edit,t2i", min_side=64, max_side=512, size_multiple=8
)


def test_formats_and_tasks_a_backend_cannot_serve_are_not_offered() -> None:
    from render_gateway.catalog_check import ModelCapabilities, check_catalog

    demo = ModelCapabilities.from_metadata(DEMO_METADATA)
    checked, notes = check_catalog(
        Catalog([SD, CLIP]), {("sd", "tiny"): [demo], ("sd", "clip"): [demo]}
    )
    (tiny,) = checked.models  # the video entry: no task left, not offered
    assert tiny.sized_formats == ("512",) and tiny.default_format is None
    assert tiny.offered_formats("i2i") == () and tiny.offered_formats("edit") == ("512",)
    assert tiny.format_for("t2i", None) is None and tiny.format_for("t2i", "512") == "512"
    assert tiny.format_for("i2i", None) is None
    with pytest.raises(FormatNotOffered, match="offers formats 512") as too_big:
        tiny.format_for("t2i", "1024")
    assert too_big.value.offered == ["512"]
    with pytest.raises(FormatNotOffered, match="takes no format"):
        tiny.format_for("i2i", "512")
    with pytest.raises(CatalogError):
        checked.resolve("video", "sd", "clip", "t2v")
    assert any("video/sd/clip: no task left" in n for n in notes)
    assert any("default_format '1024'" in n for n in notes)
    matrix = checked.matrix()["image"][0]
    assert matrix["formats_by_task"] == {"t2i": ["512"], "i2i": [], "edit": ["512"]}


def test_every_backend_of_a_model_must_serve_what_is_offered() -> None:
    from render_gateway.catalog_check import ModelCapabilities, check_catalog

    big = ModelCapabilities.from_metadata(worker_metadata(tasks="t2i,i2i,edit", max_side=2048))
    small = ModelCapabilities.from_metadata(worker_metadata(tasks="t2i", max_side=1024))
    checked, _ = check_catalog(Catalog([SD]), {("sd", "tiny"): [big, small]})
    (tiny,) = checked.models
    assert tiny.tasks == ("t2i",) and "1024" in tiny.sized_formats


def test_a_backend_that_reports_nothing_restricts_nothing() -> None:
    from render_gateway.catalog_check import ModelCapabilities, check_catalog

    triton = ModelCapabilities.from_metadata({"name": "m", "platform": "python"})
    checked, notes = check_catalog(Catalog([SD]), {("sd", "tiny"): [triton]})
    assert checked.matrix() == Catalog([SD]).matrix() and notes == []
    unread, _ = check_catalog(Catalog([SD]), {})
    assert unread.models == [SD]
    assert SD.format_for("i2i", None) == "1024"  # unchecked: forwarded as configured


def test_explicit_sizes_must_fit_every_backends_sides() -> None:
    """The OpenAI routes' ``size``: checked against the sides every backend takes (the largest
    minimum, the smallest maximum, the least common multiple of their multiples)."""
    from render_gateway.catalog_check import ModelCapabilities, check_catalog

    one = ModelCapabilities.from_metadata(
        worker_metadata(tasks="t2i,i2i,edit", sized_tasks="t2i,edit", max_side=1024)
    )
    other = ModelCapabilities(min_side=64, max_side=512, size_multiple=16)
    checked, _ = check_catalog(Catalog([SD]), {("sd", "tiny"): [one, other]})
    (tiny,) = checked.models
    assert (tiny.min_side, tiny.max_side, tiny.size_multiple) == (64, 512, 16)
    tiny.check_size("t2i", 64, 512)
    for width, height in ((48, 64), (64, 528), (80, 72)):
        with pytest.raises(SizeNotOffered) as refused:
            tiny.check_size("t2i", width, height)
        assert refused.value.limits == {"min_side": 64, "max_side": 512, "size_multiple": 16}
    with pytest.raises(SizeNotOffered, match="takes no size"):
        tiny.check_size("i2i", 64, 64)
    SD.check_size("t2i", 1, 99999)  # nothing reported: nothing restricted
