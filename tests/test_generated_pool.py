"""Generated images labelled by the oracle: the pool script writes a data set that loads back."""

from selfcorrect.train import generated_pool
from selfcorrect.world import oracle
from selfcorrect.world.conversations import ConversationSet


def test_pool_round_trip_and_use_in_training_conversations(tiny_world_pipeline, tmp_path):
    out = tmp_path / "pool"
    args = generated_pool.parse_args(
        ["--output", str(out), "--images", "3", "--source", str(tiny_world_pipeline), "--no-progress"]
    )
    generated_pool.main(args)
    pool = generated_pool.load_pool(out)
    assert len(pool) == 3
    for item in pool:
        assert item.image.mode == "RGB" and item.image.size == (64, 64)
        assert [d.to_dict() for d in item.truth] == [d.to_dict() for d in oracle.analyse(item.image)]
        assert item.prompt
    ds = ConversationSet(4, generated=pool, generated_share=1.0, mix={"image_pointwise": 1.0})
    assert all(ds[i].images[0].tobytes() in {p.image.tobytes() for p in pool} for i in range(4))
