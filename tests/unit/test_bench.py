"""The bench's steady rate counts only rows written after the clock started."""

from bench.replay import steady_rate


def test_rows_of_the_first_write_are_not_counted():
    # Three writes of 100 rows, one second apart: 200 rows in 2 s after the first write.
    stamps = [1000] * 100 + [2000] * 100 + [3000] * 100
    assert steady_rate(stamps) == 100.0


def test_a_single_write_has_no_rate():
    assert steady_rate([5] * 10) == 0.0
    assert steady_rate([]) == 0.0


def test_the_gpu_bench_says_so_when_there_is_no_gpu():
    import pytest
    import torch

    from bench.run import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the GPU bench would run")
    with pytest.raises(SystemExit, match="no CUDA GPU.*nothing measured.*DEVICE=cpu"):
        main(["--device", "cuda"])
