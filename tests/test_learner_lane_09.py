"""Chapter 09 as a learner opens it (FCOS_OFFLINE unset, no network, no GPU): see learner_lane.py.

In the course mode the chapter trains the main job on the CPU and must show a working detector.
"""
import re

from learner_lane import downloaded_files, run_as_learner


def test_chapter_09_trains_the_main_job_in_the_course_mode(tmp_path):
    text, home = run_as_learner("09_train_eval", tmp_path)
    assert "run mode: course (no CUDA GPU" in text
    assert "data: the course dataset | iters: 300" in text and "device: cpu" in text
    found = re.search(r"mAP@0\.5 on the val split: (\d\.\d+)", text)
    assert found, "chapter 09 printed no mAP@0.5"
    assert float(found.group(1)) >= 0.5
    assert downloaded_files(home) == []
