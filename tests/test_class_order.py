"""The same class names in another order are named as such, with the recipe key that fixes
the order (issue 25: RAF-DB's seven classes in its own order were refused as "not the 7 classes")."""

from __future__ import annotations

import pytest

from fertool import CLASS_NAMES
from fertool.checkpoint import check_same_classes
from fertool.errors import DataError

#: RAF-DB's own label order (1 Surprise ... 7 Neutral).
RAFDB_ORDER = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


def test_the_same_names_in_another_order_say_so_and_how_to_map_them():
    with pytest.raises(DataError) as caught:
        check_same_classes(CLASS_NAMES, RAFDB_ORDER, model="best.pt", data="rafdb/")
    message = str(caught.value)
    assert "same names" in message and "another order" in message
    assert "data: Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral" in message
    assert "data.classes=[Anger, Disgust, Fear, Happiness, Sadness, Surprise, Neutral]" in message
    assert "--" not in message  # a library message names recipe keys, not command-line flags


def test_other_names_keep_the_other_class_set_message():
    with pytest.raises(DataError, match="are not the 7 classes of best.pt") as caught:
        check_same_classes(
            CLASS_NAMES,
            ("Anger", "Contempt", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"),
            model="best.pt",
            data="ferplus/",
        )
    assert "another order" not in str(caught.value)
    check_same_classes(CLASS_NAMES, CLASS_NAMES, model="best.pt", data="fer2013.csv")  # same order: accepted


def test_a_recipe_listing_the_data_classes_in_another_order_says_so():
    from fertool.engine.data import with_data_classes
    from fertool.recipe import load_recipe

    recipe = load_recipe("demo", [f"data.classes=[{', '.join(RAFDB_ORDER)}]"])
    with pytest.raises(DataError, match="same 7 names as prepared/ in another order"):
        with_data_classes(recipe, CLASS_NAMES, "prepared/", log=lambda m: None)
