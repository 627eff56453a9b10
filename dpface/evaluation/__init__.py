"""Evaluation harness: how much identity an anonymiser removes and what it keeps.

The protocol follows SPEC §5 (the seed papers' measurements, reimplemented):

* ``faces``       the faces to evaluate (bundled samples with identities, or a user folder);
* ``anonymisers`` every condition in one interface: non-DP baselines, DP-Pix, dpface's
                  identity mechanisms with the surrogate generator (and the generator at ε = ∞);
* ``measure``     per-output image metrics (SSIM, PSNR, detection, landmarks, skin);
* ``attacks``     the attackers (dlib, FaceRes, MobileFace) and the gallery attacks;
* ``stats``       means with confidence intervals;
* ``runner``      per-face work in a process pool, cached on disk (resumable, seeded);
* ``aggregate``   per-condition summaries;
* ``report``      the Table-5.1-style Markdown/HTML tables and the plots;
* ``command``     the ``dpface evaluate`` command; ``bench`` its benchmark.
"""
