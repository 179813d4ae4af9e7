"""The nearest-neighbour retrieval baseline: cosine neighbours and consensus reranking."""

import pytest
import torch

from adapt.errors import UserError
from capkit.knn import KnnCaptioner


def captioner(k: int = 2) -> KnnCaptioner:
    features = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.1]]), dim=-1
    )
    captions = [
        ["something brown in the picture", "a dog runs on the grass", "a photo taken outside"],
        ["a dog runs on the grass quickly", "the dog runs on grass", "dog on a lawn"],
        ["a man rides a bike", "a cyclist on a road"],
        ["two children play in the water", "kids splash in a pool"],
    ]
    return KnnCaptioner("efficientnet_lite0", features, captions, k=k)


def test_nearest_by_cosine_not_by_length():
    knn = captioner()
    # Ten times longer than image 2's vector but pointing the same way: image 2 is the nearest.
    assert knn.neighbours(torch.tensor([[0.0, 0.0, 10.0]]))[0, 0] == 2
    assert knn.neighbours(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.05, 0.0]]))[:, 0].tolist() == [3, 0]


def test_consensus_picks_the_caption_the_neighbourhood_agrees_on():
    knn = captioner(k=2)
    # Nearest image 0 has three captions; its neighbour (image 1) is about a dog running on grass.
    assert knn.caption(torch.tensor([[1.0, 0.05, 0.0]])) == ["a dog runs on the grass"]
    # With k=1 there is no neighbour but itself: its own captions vote, and they share little.
    assert knn.caption(torch.tensor([[1.0, 0.05, 0.0]]))[0] in knn.captions[0]


def test_batch_of_queries_returns_one_caption_each():
    out = captioner().caption(torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert out[0] in captioner().captions[2] and out[1] in captioner().captions[3] and len(out) == 3


def test_needs_training_images():
    with pytest.raises(UserError, match="at least one training image"):
        KnnCaptioner("efficientnet_lite0", torch.zeros(0, 3), [])
