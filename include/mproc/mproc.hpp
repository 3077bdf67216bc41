// mproc: Python's multiprocessing model for C++20. The umbrella header.
#pragma once
#include "mproc/connection.hpp"
#include "mproc/context.hpp"
#include "mproc/errors.hpp"
#include "mproc/function_ref.hpp"
#include "mproc/process.hpp"
#include "mproc/serialize.hpp"
#include "mproc/executor.hpp"
#include "mproc/futures.hpp"
#include "mproc/pool.hpp"
