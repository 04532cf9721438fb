# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_agentctl_global_optspecs
    string join \n socket= json h/help V/version
end

function __fish_agentctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_agentctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_agentctl_using_subcommand
    set -l cmd (__fish_agentctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c agentctl -n "__fish_agentctl_needs_command" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_needs_command" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_needs_command" -s V -l version -d 'Print version'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "status" -d 'Show what the agent is doing and what the worker runs'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "health" -d 'Show the health of the worker, the GPUs and the hub, probed now'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "check" -d 'Check for a new worker image digest now (like a nudge from the hub)'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "update" -d 'Deploy one image digest now, through the same safe path as any update'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "rollback" -d 'Revert now to the good digest before the current one, and stay there'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "pin" -d 'Deploy a digest or a tag and hold the worker there until agentctl unpin'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "unpin" -d 'Release a pin: follow the registry (or the hub) again'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "drain" -d 'Drain the worker for maintenance and hold updates until agentctl undrain'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "undrain" -d 'Start the worker again after a maintenance drain, and resume updates'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "history" -d 'Show the audit trail of updates, rollbacks and drains, oldest first'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "man" -d 'Write the man pages of agentctl and its commands into a folder (for packaging)'
complete -c agentctl -n "__fish_agentctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c agentctl -n "__fish_agentctl_using_subcommand status" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand status" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand health" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand health" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand health" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand check" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand check" -l wait -d 'Block until the update the check starts (if any) has ended, and exit with its outcome'
complete -c agentctl -n "__fish_agentctl_using_subcommand check" -l dry-run -d 'Say what the check would do now, gate by gate, without doing it'
complete -c agentctl -n "__fish_agentctl_using_subcommand check" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand update" -l digest -d 'The image digest to deploy: sha256: and 64 lowercase hex digits, as `docker buildx imagetools inspect` or the registry shows it' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand update" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand update" -l dry-run -d 'Say what the update would do now, gate by gate, without doing it'
complete -c agentctl -n "__fish_agentctl_using_subcommand update" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand update" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand rollback" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand rollback" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand rollback" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand pin" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand pin" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand pin" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand unpin" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand unpin" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand unpin" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand drain" -l reason -d 'Why the worker is drained (shown by agentctl status and history)' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand drain" -l timeout -d 'How long the jobs in flight may take, like 90s, 10m or 1h30m (default: the agent\'s worker.drain.timeout)' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand drain" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand drain" -l wait -d 'Block until the worker is stopped (or the drain aborted), and exit with the outcome'
complete -c agentctl -n "__fish_agentctl_using_subcommand drain" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand drain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand undrain" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand undrain" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand undrain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand history" -s n -l last -d 'Only the last N entries' -r
complete -c agentctl -n "__fish_agentctl_using_subcommand history" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand history" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand history" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentctl -n "__fish_agentctl_using_subcommand completions" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand completions" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand completions" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -l out -d 'The folder to write `agentctl.1` and `agentctl-<command>.1` into' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -l socket -d 'The agent\'s control socket (its agent.control_socket)' -r -F
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -l json -d 'Print the agent\'s answer as JSON (for scripts) instead of text'
complete -c agentctl -n "__fish_agentctl_using_subcommand man" -s h -l help -d 'Print help'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "status" -d 'Show what the agent is doing and what the worker runs'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "health" -d 'Show the health of the worker, the GPUs and the hub, probed now'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "check" -d 'Check for a new worker image digest now (like a nudge from the hub)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "update" -d 'Deploy one image digest now, through the same safe path as any update'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "rollback" -d 'Revert now to the good digest before the current one, and stay there'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "pin" -d 'Deploy a digest or a tag and hold the worker there until agentctl unpin'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "unpin" -d 'Release a pin: follow the registry (or the hub) again'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "drain" -d 'Drain the worker for maintenance and hold updates until agentctl undrain'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "undrain" -d 'Start the worker again after a maintenance drain, and resume updates'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "history" -d 'Show the audit trail of updates, rollbacks and drains, oldest first'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "completions" -d 'Print a shell completion script (bash, zsh, fish, elvish, powershell)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "man" -d 'Write the man pages of agentctl and its commands into a folder (for packaging)'
complete -c agentctl -n "__fish_agentctl_using_subcommand help; and not __fish_seen_subcommand_from status health check update rollback pin unpin drain undrain history completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
