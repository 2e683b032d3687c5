"""The stages of the per-frame path, one job each, joined by :class:`live.processor.FrameProcessor`.

    camera frame -> framing (live.framing.DrivingFramer) -> keypoints and motion transfer (motion.MotionStage)
                 -> render (render.LocalRender, or remote_render.RemoteRender: a server) -> compose (compose.Composer)

avatar.AvatarStage keeps the avatar the render and the composition use; pose_search.PoseSearchStage (key F)
watches the framed crops for the pose closest to the avatar's.  Where a stage runs is a choice of wiring: a
remote run swaps the render stage and keeps every other one.
"""
