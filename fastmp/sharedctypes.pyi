# Types of fastmp.sharedctypes, fastmp's own module: each public name
# has the type of the same name in the stdlib's multiprocessing.sharedctypes,
# so code typed against multiprocessing type-checks the same with fastmp.

from multiprocessing.sharedctypes import Array as Array
from multiprocessing.sharedctypes import RawArray as RawArray
from multiprocessing.sharedctypes import RawValue as RawValue
from multiprocessing.sharedctypes import Synchronized as Synchronized
from multiprocessing.sharedctypes import SynchronizedArray as SynchronizedArray
from multiprocessing.sharedctypes import SynchronizedBase as SynchronizedBase
from multiprocessing.sharedctypes import (
    SynchronizedString as SynchronizedString,
)
from multiprocessing.sharedctypes import Value as Value
from multiprocessing.sharedctypes import copy as copy
from multiprocessing.sharedctypes import synchronized as synchronized

__all__ = [
    "RawValue",
    "RawArray",
    "Value",
    "Array",
    "copy",
    "synchronized",
]
