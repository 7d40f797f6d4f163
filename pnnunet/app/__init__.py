"""The web platform (``pnnunet_app``): upload an image or a DICOM series, pick a trained model,
segment it as a background job, view the labels over the image (NiiVue, vendored), read the
statistics and download the results.

Layer 13, beside ``cli``: the server (:mod:`.server`) never imports Paddle; each job runs in its own
process (:mod:`.worker`), which predicts through :mod:`pnnunet.inference.pipeline` exactly as
``pnnunet_predict`` does. Jobs live on disk (:mod:`.jobs`), so a restart loses nothing.
"""
