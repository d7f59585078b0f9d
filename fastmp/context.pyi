# Types of fastmp.context, fastmp's own module: each public name
# has the type of the same name in the stdlib's multiprocessing.context,
# so code typed against multiprocessing type-checks the same with fastmp.

from multiprocessing.context import AuthenticationError as AuthenticationError
from multiprocessing.context import BaseContext as BaseContext
from multiprocessing.context import BufferTooShort as BufferTooShort
from multiprocessing.context import DefaultContext as DefaultContext
from multiprocessing.context import ForkContext as ForkContext
from multiprocessing.context import ForkProcess as ForkProcess
from multiprocessing.context import ForkServerContext as ForkServerContext
from multiprocessing.context import ForkServerProcess as ForkServerProcess
from multiprocessing.context import Process as Process
from multiprocessing.context import ProcessError as ProcessError
from multiprocessing.context import SpawnContext as SpawnContext
from multiprocessing.context import SpawnProcess as SpawnProcess
from multiprocessing.context import TimeoutError as TimeoutError
from multiprocessing.context import assert_spawning as assert_spawning
from multiprocessing.context import get_spawning_popen as get_spawning_popen
from multiprocessing.context import set_spawning_popen as set_spawning_popen

__all__ = ()
