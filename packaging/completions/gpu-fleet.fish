# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_gpu_fleet_global_optspecs
    string join \n etcd= group= config= ca-file= cert-file= key-file= username= password-file= insecure json h/help V/version
end

function __fish_gpu_fleet_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_gpu_fleet_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_gpu_fleet_using_subcommand
    set -l cmd (__fish_gpu_fleet_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -s V -l version -d 'Print version'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -f -a "policy" -d 'Show or change the group\'s rollout policy'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -f -a "rollout" -d 'Start, follow, pause, resume or abort the group\'s rollout'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -f -a "hosts" -d 'One line per host: id, digest, phase, GPU health, slot, last event, seen'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -f -a "release" -d 'Give back the slot a dead host holds (and a canary seat it never used)'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -f -a "completions" -d 'Print shell completions'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -f -a "man" -d 'Write man pages into a folder (for packaging)'
complete -c gpu-fleet -n "__fish_gpu_fleet_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -f -a "show" -d 'Print the policy (defaults where none was set)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -f -a "set" -d 'Change some fields of the policy; the others keep their value'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and not __fish_seen_subcommand_from show set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l max-unavailable -d 'Hosts down at once: a count (2) or a percentage of the live hosts (5%)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l canary -d 'Hosts that try a new digest alone first' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l bake -d 'How long the canaries must stay verified before the rest go (e.g. 10m)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l halt-after -d 'Rolled-back hosts that halt the digest for the group (0: never by count)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l halt-ratio -d 'Share of the hosts that tried a digest whose rollback halts it (0%: off)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "show" -d 'Print the policy (defaults where none was set)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "set" -d 'Change some fields of the policy; the others keep their value'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -f -a "start" -d 'Make REF the group\'s desired digest; the policy rolls it out'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -f -a "status" -d 'Digest, state, and hosts done / in progress / failed / waiting'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -f -a "pause" -d 'Hold the rollout where it is (hosts in progress finish)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -f -a "resume" -d 'Go on after a pause or a halt'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -f -a "abort" -d 'Send every host that moved back to the previous digest'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and not __fish_seen_subcommand_from start status pause resume abort help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l max-unavailable -d 'Hosts down at once: a count (2) or a percentage of the live hosts (5%)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l canary -d 'Hosts that try a new digest alone first' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l bake -d 'How long the canaries must stay verified before the rest go (e.g. 10m)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l halt-after -d 'Rolled-back hosts that halt the digest for the group (0: never by count)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l halt-ratio -d 'Share of the hosts that tried a digest whose rollback halts it (0%: off)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l timeout -d 'Give up waiting after this long (exit 1), e.g. 2h' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l wait -d 'Block until the rollout completes (exit 0) or halts or is aborted (exit 1)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from pause" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from resume" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from abort" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from help" -f -a "start" -d 'Make REF the group\'s desired digest; the policy rolls it out'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from help" -f -a "status" -d 'Digest, state, and hosts done / in progress / failed / waiting'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from help" -f -a "pause" -d 'Hold the rollout where it is (hosts in progress finish)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from help" -f -a "resume" -d 'Go on after a pause or a halt'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from help" -f -a "abort" -d 'Send every host that moved back to the previous digest'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand rollout; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand hosts" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand release" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand completions" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l out -d 'The folder to write `agentctl.1` and `agentctl-<command>.1` into' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l etcd -d 'An etcd member\'s client URL (repeat for each member)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l group -d 'The group (default: the config\'s fleet.group)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l config -d 'Read the etcd URLs, TLS, auth and group from an agent\'s config ([fleet])' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l ca-file -d 'The CA that signs the etcd members\' certificates (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l cert-file -d 'A client certificate for etcd (PEM; with --key-file)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l key-file -d 'The client certificate\'s key (PEM)' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l username -d 'An etcd user (with --password-file)' -r
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l password-file -d 'A file that holds the etcd user\'s password' -r -F
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l insecure -d 'Allow plain http to etcd off loopback'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -l json -d 'Print JSON instead of text'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand man" -s h -l help -d 'Print help'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and not __fish_seen_subcommand_from policy rollout hosts release completions man help" -f -a "policy" -d 'Show or change the group\'s rollout policy'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and not __fish_seen_subcommand_from policy rollout hosts release completions man help" -f -a "rollout" -d 'Start, follow, pause, resume or abort the group\'s rollout'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and not __fish_seen_subcommand_from policy rollout hosts release completions man help" -f -a "hosts" -d 'One line per host: id, digest, phase, GPU health, slot, last event, seen'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and not __fish_seen_subcommand_from policy rollout hosts release completions man help" -f -a "release" -d 'Give back the slot a dead host holds (and a canary seat it never used)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and not __fish_seen_subcommand_from policy rollout hosts release completions man help" -f -a "completions" -d 'Print shell completions'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and not __fish_seen_subcommand_from policy rollout hosts release completions man help" -f -a "man" -d 'Write man pages into a folder (for packaging)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and not __fish_seen_subcommand_from policy rollout hosts release completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "show" -d 'Print the policy (defaults where none was set)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "set" -d 'Change some fields of the policy; the others keep their value'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and __fish_seen_subcommand_from rollout" -f -a "start" -d 'Make REF the group\'s desired digest; the policy rolls it out'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and __fish_seen_subcommand_from rollout" -f -a "status" -d 'Digest, state, and hosts done / in progress / failed / waiting'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and __fish_seen_subcommand_from rollout" -f -a "pause" -d 'Hold the rollout where it is (hosts in progress finish)'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and __fish_seen_subcommand_from rollout" -f -a "resume" -d 'Go on after a pause or a halt'
complete -c gpu-fleet -n "__fish_gpu_fleet_using_subcommand help; and __fish_seen_subcommand_from rollout" -f -a "abort" -d 'Send every host that moved back to the previous digest'
