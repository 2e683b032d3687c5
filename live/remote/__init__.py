"""Remote rendering: a render server (``run_live.py --serve``) and the client the live tool renders through.

Only keypoints leave the user's machine; the server holds the model and, per
session, the encoded avatar.  See protocol.py for the wire format.
"""
