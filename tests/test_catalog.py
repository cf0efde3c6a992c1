"""The model catalog: resolution, Hugging Face aliases, errors naming what exists."""

from __future__ import annotations

import pytest

from render_gateway.catalog import Catalog, CatalogError, CatalogModel

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
