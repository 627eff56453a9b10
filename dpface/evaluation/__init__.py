"""Evaluation harness: how much identity an anonymiser removes and what it keeps.

The protocol follows SPEC §5 (the seed papers' measurements, reimplemented):

* ``faces``       the faces to evaluate (bundled samples with identities, or a user folder);
* ``anonymisers`` every condition and how a photo is released under it: the dpface rows run
                  the product (``AnonymizeConfig`` -> ``Anonymizer.anonymize``), the non-DP
                  baselines act on the regions the product protects;
* ``measure``     per-output image metrics (SSIM, PSNR, detection, landmarks, skin);
* ``attacks``     the attackers (dlib, FaceRes, MobileFace) and the gallery attacks;
* ``stats``       means with confidence intervals;
* ``runner``      per-photo work in a process pool on a temporary ledger, cached on disk
                  per face (resumable, seeded);
* ``aggregate``   per-condition summaries;
* ``report``      the Table-5.1-style Markdown/HTML tables and the plots;
* ``command``     the ``dpface evaluate`` command; ``bench`` its benchmark.
"""
