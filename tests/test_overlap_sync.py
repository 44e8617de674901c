"""Overlap sync (pipelines/overlap_sync.py) and the depth correspondences it reads
(formats/projection.py), without a model: the averaging itself, latent-grid depths with their edge
cells left out, and links that carry a 3D-consistent latent onto itself."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from formats.projection import depth_correspondences, grid_depth, scaled_camera
from pipelines.overlap_sync import depth_links, link_tensors, sync_overlaps
from world.orbit import render_orbit, sample_orbit_spec


def test_sync_overlaps_averages_the_linked_cells_and_nothing_else():
    """Row 1's left half is linked to row 0 at the same cells: there it becomes the mean of both, elsewhere
    (and all of row 0, which nothing links) it stays. Guards against averaging outside the overlap, a
    grid that reads the wrong cells (grid_sample's cell-centre convention) and counts that weigh a view
    twice."""
    estimate = torch.randn(2, 4, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, x = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(8) + 0.5, indexing="ij")
    grid = torch.stack([x / 8 * 2 - 1, y / 6 * 2 - 1], -1)[None].double()
    mask = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    mask[..., :4] = 1
    out = sync_overlaps(estimate, torch.tensor([0]), torch.tensor([1]), grid, mask)
    torch.testing.assert_close(out[0], estimate[0])
    torch.testing.assert_close(out[1, ..., :4], (estimate[0, ..., :4] + estimate[1, ..., :4]) / 2, atol=1e-6, rtol=0)  # grid_sample's float32 coordinates
    torch.testing.assert_close(out[1, ..., 4:], estimate[1, ..., 4:])
    assert sync_overlaps(estimate) is estimate  # no links


def test_grid_depth_reads_cell_centres_and_leaves_depth_edges_out():
    """A 4× smaller grid reads the pixel nearest each cell centre; a cell holding a depth step (a box in
    front of a wall) is unknown, a steady slope (the ground seen at an angle) is not. Guards against
    reading cell corners (an off-by-half-cell shift) and an edge test that drops every sloped cell."""
    depth = np.tile(np.linspace(4.0, 6.0, 16)[:, None], (1, 16))  # a slope down the image
    depth[4:8, 4:10] = 2.0  # a box: its rows 4..7 span grid row 1, its columns 4..9 grid columns 1..2
    plain = grid_depth(depth, (4, 4))
    np.testing.assert_array_equal(plain, depth[2::4, 2::4])
    edged = grid_depth(depth, (4, 4), edge_tolerance=0.1)
    unknown = np.isnan(edged)
    # the box's own border cells mix box and slope; cells two pixels clear of it do not
    assert unknown[1, 1] and unknown[1, 2] and unknown[0, 1] and unknown[2, 2]
    assert not unknown[3].any() and not unknown[:, 3].any()
    np.testing.assert_array_equal(edged[~unknown], plain[~unknown])
    sky = depth.copy()
    sky[:, 12:] = np.inf
    assert np.isnan(grid_depth(sky, (4, 4), 0.1)[:, 2]).all()  # a surface beside empty space mixes the two


def test_a_view_without_depth_is_linked_to_nothing():
    spec = replace(sample_orbit_spec(3), n_cameras=3, resolution=32)
    views = render_orbit(spec)
    cameras = [scaled_camera(v.camera, 8, 8) for v in views]
    depths = [grid_depth(v.depth, (8, 8)) for v in views]
    depths[1] = None
    links = depth_correspondences(cameras, depths, [[1, 2], [0, 2], [0, 1]])
    assert not links[1][0][1].any() and not links[1][1][1].any()  # view 1 sees nothing of the others
    assert not links[0][0][1].any() and links[0][1][1].any()  # nor do they see it; 0 and 2 still link


def _orbit_latents(size=16, views=8):
    """A latent that is a function of the 3D point each cell sees (a 3D-consistent latent), with the
    scene's cameras and depths."""
    spec = replace(sample_orbit_spec(5), n_cameras=views)
    rendered = render_orbit(spec)
    latents = []
    for v in rendered:
        camera = scaled_camera(v.camera, size, size)
        points = camera.unproject(grid_depth(v.depth, (size, size)))
        x, y, z = np.moveaxis(points, -1, 0)
        latents.append(np.stack([np.sin(1.3 * x), np.cos(1.1 * y), np.sin(0.9 * (x + y)), np.tanh(z)]))
    return torch.from_numpy(np.stack(latents)), [v.camera for v in rendered], [v.depth for v in rendered]


def test_depth_links_carry_a_consistent_latent_onto_itself():
    """Where a latent already agrees across views (a function of the 3D point each cell sees), syncing it
    changes it far less than it changes latents that disagree, and the links reach most of the views.
    Guards against links built with the wrong camera scale, a transposed grid, or edge cells that mix
    surfaces (each makes the sync move a consistent latent)."""
    consistent, cameras, depths = _orbit_latents()
    everyone = [[a for a in range(8) if a != b] for b in range(8)]
    links = depth_links(cameras, depths, (16, 16), everyone)
    tensors = link_tensors(links, (16, 16), "cpu", torch.float64)
    linked = tensors[3].amax(0).sum() / 256
    assert linked > 0.4  # of the cells of the views, on average (0.5–0.6 on orbit scenes)
    moved = (sync_overlaps(consistent, *tensors) - consistent).abs()
    noise = torch.randn_like(consistent)
    moved_noise = (sync_overlaps(noise, *tensors) - noise).abs()
    assert moved.mean() < 0.15 * moved_noise.mean()
    transposed = [(a, b, seen, where[..., ::-1]) for a, b, seen, where in links]
    moved_transposed = (sync_overlaps(consistent, *link_tensors(transposed, (16, 16), "cpu", torch.float64)) - consistent)
    assert moved_transposed.abs().mean() > 3 * moved.mean()
    mixed = link_tensors(depth_links(cameras, depths, (16, 16), everyone, edge_tolerance=None), (16, 16), "cpu",
                         torch.float64)
    assert (sync_overlaps(consistent, *mixed) - consistent).abs().mean() > 1.5 * moved.mean()


class _ShuffleVAE:
    """An exactly invertible stand-in for a VAE (pixel unshuffle: 3 channels × 2 × 2 → 12 latent
    channels), so image-space sync can be checked against averaging the images themselves."""

    dtype = torch.float64
    config = type("Config", (), {"scaling_factor": 0.5})()

    def decode(self, z):
        return type("Out", (), {"sample": torch.nn.functional.pixel_shuffle(z, 2)})()

    def encode(self, x):
        mode = torch.nn.functional.pixel_unshuffle(x, 2)
        return type("Out", (), {"latent_dist": type("Dist", (), {"mode": lambda self: mode})()})()


def test_sync_decoded_averages_the_decoded_images_and_carries_the_change_back():
    """With an invertible VAE, image-space sync is exactly: decode, average the linked pixels, encode.
    Guards against the VAE's scaling factor applied once instead of both ways, and a change computed
    against the estimate instead of its own round trip. No links: unchanged."""
    from pipelines.overlap_sync import sync_decoded
    vae = _ShuffleVAE()
    generator = torch.Generator().manual_seed(1)
    estimate = torch.randn(2, 12, 3, 4, dtype=torch.float64, generator=generator)
    y, x = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(8) + 0.5, indexing="ij")
    grid = torch.stack([x / 8 * 2 - 1, y / 6 * 2 - 1], -1)[None].double()
    mask = torch.zeros(1, 1, 6, 8, dtype=torch.float64)
    mask[..., 2:5, :] = 1
    links = (torch.tensor([0]), torch.tensor([1]), grid, mask)
    images = vae.decode(estimate / 0.5).sample
    expected = torch.nn.functional.pixel_unshuffle(sync_overlaps(images, *links), 2) * 0.5
    torch.testing.assert_close(sync_decoded(estimate, vae, links), expected, atol=1e-6, rtol=0)
    assert sync_decoded(estimate, vae, ()) is estimate
