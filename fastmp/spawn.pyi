# Types of fastmp.spawn: at runtime this is the stdlib's
# multiprocessing.spawn itself, so its names are that module's.

from multiprocessing.spawn import WINEXE as WINEXE
from multiprocessing.spawn import WINSERVICE as WINSERVICE
from multiprocessing.spawn import _main as _main
from multiprocessing.spawn import freeze_support as freeze_support
from multiprocessing.spawn import get_command_line as get_command_line
from multiprocessing.spawn import get_executable as get_executable
from multiprocessing.spawn import get_preparation_data as get_preparation_data
from multiprocessing.spawn import import_main_path as import_main_path
from multiprocessing.spawn import is_forking as is_forking
from multiprocessing.spawn import old_main_modules as old_main_modules
from multiprocessing.spawn import prepare as prepare
from multiprocessing.spawn import set_executable as set_executable
from multiprocessing.spawn import spawn_main as spawn_main

__all__ = [
    "_main",
    "freeze_support",
    "set_executable",
    "get_executable",
    "get_preparation_data",
    "get_command_line",
    "import_main_path",
]
