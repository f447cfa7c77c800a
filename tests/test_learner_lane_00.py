"""Chapter 00 as a learner opens it (FCOS_OFFLINE unset, no network, no GPU): see learner_lane.py."""
from learner_lane import downloaded_files, run_as_learner


def test_chapter_00_runs_in_the_course_mode_and_downloads_nothing(tmp_path):
    text, home = run_as_learner("00_boxes_and_data", tmp_path)
    assert "run mode: course (no CUDA GPU" in text
    # The cell that shows the missing-VOC message must show it without a download.
    assert "FCOS_OFFLINE=1 forbids downloading" in text
    assert downloaded_files(home) == []
