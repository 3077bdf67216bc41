// base layer (internal): the process name that log lines carry. The process
// layer owns the identity (current_process()) and tells the logger here when
// it changes (set_identity), since base may not reach up to ask it.
#pragma once
#include <string_view>

namespace mproc::detail {

// Called by set_identity (a child at start-up, before it runs user code):
// lines logged afterwards carry `name` (cut at 127 bytes). "MainProcess"
// until then.
void set_log_process_name(std::string_view name) noexcept;

}  // namespace mproc::detail
