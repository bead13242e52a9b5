# shellcheck shell=bash disable=SC2034,SC2154  # variables shared with the sourcing recipe
# The recipes' option parser (after Kaldi's and ESPnet's utils/parse_options.sh), sourced after a
# recipe has given each of its options a default and named them in two lists:
#   $options   --name VALUE or --name=VALUE sets the variable `name` (dashes become underscores)
#   $switches  --name sets the variable `name` to 1
# -h/--help prints the recipe's usage() and exits 0; `--` ends the options and the rest goes to
# the array `extra` (fairseq-train flags for every variant). Anything else prints the usage and
# fails.
extra=()
while (( $# )); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        --*=*) _option=$1; shift; set -- "${_option%%=*}" "${_option#*=}" "$@" ;;
        --*)
            _name=${1#--}
            _name=${_name//-/_}
            if [[ " $switches " == *" $_name "* ]]; then
                printf -v "$_name" 1
                shift
            elif [[ " $options " == *" $_name "* ]]; then
                (( $# >= 2 )) || { usage >&2; die "$1 needs a value"; }
                printf -v "$_name" '%s' "$2"
                shift 2
            else
                usage >&2
                die "unknown option '$1'"
            fi
            ;;
        *) usage >&2; die "unexpected argument '$1' (options start with --; fairseq-train flags go after --)" ;;
    esac
done
unset _option _name
