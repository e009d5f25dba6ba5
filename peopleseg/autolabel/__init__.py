"""Auto-labelling: teachers label images and video, so a student can be trained (distilled) on the result.

from peopleseg.autolabel import autolabel, build_teacher
autolabel(["frames/"], "labels/", build_teacher(["rvm:/opt/rvm", "mediapipe"]))
"""

from peopleseg.autolabel.ensemble import EnsembleTeacher, TTATeacher
from peopleseg.autolabel.labels import LabelPolicy
from peopleseg.autolabel.run import AutolabelConfig, AutolabelSummary, autolabel
from peopleseg.autolabel.specs import TeacherSpec, build_teacher
from peopleseg.autolabel.teacher import StatelessTeacher, Teacher

__all__ = [
    "AutolabelConfig",
    "AutolabelSummary",
    "EnsembleTeacher",
    "LabelPolicy",
    "StatelessTeacher",
    "TTATeacher",
    "Teacher",
    "TeacherSpec",
    "autolabel",
    "build_teacher",
]
