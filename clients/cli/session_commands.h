// deltaserve-cli's `session` commands: clients of deltaserve.v1.Sessions.
#ifndef DELTASERVE_CLIENTS_CLI_SESSION_COMMANDS_H_
#define DELTASERVE_CLIENTS_CLI_SESSION_COMMANDS_H_

#include <string>
#include <vector>

namespace deltaserve {
namespace cli {

// The usage lines of the session commands, for the program's usage message.
extern const char kSessionUsage[];

// Runs `deltaserve-cli session SUBCOMMAND [ID]`: `args` are the positional
// arguments after "session" (flags already parsed). Prints results to stdout
// and diagnostics to stderr; returns the process's exit status: 0,
// kExitUsage for a usage error, kExitRpcError when a call or a local file
// operation fails.
int RunSessionCommand(const std::vector<std::string>& args);

}  // namespace cli
}  // namespace deltaserve

#endif  // DELTASERVE_CLIENTS_CLI_SESSION_COMMANDS_H_
