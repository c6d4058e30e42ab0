"""MATLAB ``imresize`` arithmetic checked from its definition (no data files needed)."""

from __future__ import annotations

import numpy as np
import pytest

from hat_cli.imresize import cubic, imresize, resize_matrix, to_uint8


def test_cubic_kernel_values() -> None:
    # Keys a = -0.5: 1 at 0, 0 at the integers, 0.5625 at +-0.5, -0.0625 at +-1.5, 0 beyond 2.
    x = np.array([0.0, 0.5, -0.5, 1.0, 1.5, -1.5, 2.0, 2.5])
    np.testing.assert_allclose(cubic(x), [1.0, 0.5625, 0.5625, 0.0, -0.0625, -0.0625, 0.0, 0.0], atol=1e-15)


@pytest.mark.parametrize(
    ("shape", "scale", "out"),
    [((5, 7), 0.5, (3, 4)), ((6, 9), 1 / 3, (2, 3)), ((5, 7), 2, (10, 14)), ((4, 4), 1.5, (6, 6))],
)
def test_output_size_is_ceil(shape: tuple[int, int], scale: float, out: tuple[int, int]) -> None:
    assert imresize(np.zeros(shape), scale).shape == out
    assert imresize(np.zeros((*shape, 3)), scale).shape == (*out, 3)


def test_output_shape_argument() -> None:
    out = imresize(np.zeros((8, 12, 3)), output_shape=(4, 3))
    assert out.shape == (4, 3, 3)
    with pytest.raises(ValueError):
        imresize(np.zeros((8, 8)))
    with pytest.raises(ValueError):
        imresize(np.zeros((2, 2, 2, 2)), 2)


@pytest.mark.parametrize("border", ["replicate", "symmetric"])
@pytest.mark.parametrize(("n_in", "n_out", "scale"), [(12, 6, 0.5), (12, 4, 1 / 3), (16, 4, 0.25), (5, 20, 4.0)])
def test_weight_rows_sum_to_one(n_in: int, n_out: int, scale: float, border: str) -> None:
    m = resize_matrix(n_in, n_out, scale, border=border)  # type: ignore[arg-type]
    assert m.shape == (n_out, n_in)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-14)


def test_constant_image_stays_constant() -> None:
    img = np.full((9, 13, 3), 77.0)
    for scale in (0.25, 1 / 3, 0.5, 2.0, 3.0):
        np.testing.assert_allclose(imresize(img, scale), 77.0, atol=1e-12)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_linear_ramp_follows_the_coordinate_mapping(s: int) -> None:
    # Cubic convolution reproduces linear signals, so away from the borders each output pixel is
    # the ramp evaluated at u = x/scale + 0.5(1 - 1/scale) (1-based), i.e. value u - 1.
    ramp = np.tile(np.arange(40, dtype=np.float64), (6, 1))  # value = 0-based column index
    up = imresize(ramp, float(s))
    x = np.arange(1, up.shape[1] + 1)
    u = x / s + 0.5 * (1 - 1 / s)
    inner = slice(3 * s, -3 * s)
    np.testing.assert_allclose(up[0, inner], (u - 1)[inner], atol=1e-12)

    down = imresize(ramp, 1.0 / s)
    x = np.arange(1, down.shape[1] + 1)
    u = x * s + 0.5 * (1 - s)
    np.testing.assert_allclose(down[0, 2:-2], (u - 1)[2:-2], atol=1e-12)


def test_first_row_weights_by_hand() -> None:
    # Halving 8 samples: output 1 sits at u = 1.5; the antialiased kernel 0.5*cubic(0.5 t) reaches
    # input positions -2..5 (1-based). Positions <= 0 fall outside the signal.
    taps = np.arange(-2, 6)
    w = 0.5 * cubic(0.5 * (1.5 - taps))
    w = w / w.sum()
    replicate = np.zeros(8)
    symmetric = np.zeros(8)
    for pos, weight in zip(taps, w, strict=True):
        replicate[min(max(pos, 1), 8) - 1] += weight  # clamp to the edge pixel
        symmetric[(1 - pos if pos < 1 else pos) - 1] += weight  # 0 -> 1, -1 -> 2, -2 -> 3
    np.testing.assert_allclose(resize_matrix(8, 4, 0.5, border="replicate")[0], replicate, atol=1e-15)
    np.testing.assert_allclose(resize_matrix(8, 4, 0.5, border="symmetric")[0], symmetric, atol=1e-15)
    # The two rules only disagree at the ends.
    rep = resize_matrix(8, 4, 0.5, border="replicate")
    sym = resize_matrix(8, 4, 0.5, border="symmetric")
    np.testing.assert_array_equal(rep[1:-1], sym[1:-1])
    assert not np.allclose(rep[0], sym[0])


def test_no_antialiasing_keeps_the_narrow_kernel() -> None:
    m = resize_matrix(16, 4, 0.25, antialiasing=False)
    assert (np.count_nonzero(m, axis=1) <= 4).all()
    assert (np.count_nonzero(resize_matrix(16, 4, 0.25), axis=1) > 4).all()


def test_rows_are_resized_first_and_rounded_between_passes() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 12)).astype(np.float64)
    rows = resize_matrix(12, 3, 0.25)
    cols = resize_matrix(12, 3, 0.25)
    by_hand = to_uint8(to_uint8(rows @ img).astype(np.float64) @ cols.T)
    np.testing.assert_array_equal(to_uint8(imresize(img, 0.25, round_between_passes=True)), by_hand)
    # Without the intermediate rounding the result is the plain separable product.
    np.testing.assert_allclose(imresize(img, 0.25), rows @ img @ cols.T, atol=1e-9)


def test_larger_reduction_goes_first() -> None:
    # Scales (rows 0.5, cols 0.25): MATLAB sorts the scales and resizes columns first. The order
    # only shows with rounding/clipping between passes, so compare with both orders done by hand.
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 32)).astype(np.float64)
    rows = resize_matrix(16, 8, 0.5)
    cols = resize_matrix(32, 8, 0.25)
    cols_first = to_uint8(rows @ to_uint8(img @ cols.T).astype(np.float64))
    rows_first = to_uint8(to_uint8(rows @ img).astype(np.float64) @ cols.T)
    assert not np.array_equal(cols_first, rows_first)  # the check below can tell them apart
    got = to_uint8(imresize(img, (0.5, 0.25), round_between_passes=True))
    np.testing.assert_array_equal(got, cols_first)
    # Transposed problem: now the rows carry the larger reduction and go first.
    got_t = to_uint8(imresize(img.T, (0.25, 0.5), round_between_passes=True))
    np.testing.assert_array_equal(got_t, cols_first.T)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (0.5, 1),
        (1.5, 2),
        (2.5, 3),
        (254.5, 255),
        (1.4999999, 1),
        (-0.7, 0),
        (-3.0, 0),
        (300.0, 255),
        (np.nan, 0),
    ],
)
def test_to_uint8_rounds_half_away_from_zero_and_clips(value: float, want: int) -> None:
    out = to_uint8(np.array([value]))
    assert out.dtype == np.uint8
    assert int(out[0]) == want
