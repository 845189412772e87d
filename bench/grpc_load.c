/*
 * A closed-loop load generator for one unary gRPC method, on gRPC's C core.
 *
 * The bench measures a Python server on a machine with few cores: a Python
 * client would spend as much CPU per call as the server it measures, so the
 * gRPC figures come from this program, as the REST figures come from wrk.
 *
 * Usage: grpc_load [options] TARGET METHOD REQUESTS
 *   TARGET    host:port, reached over one insecure channel
 *   METHOD    the method's full path, e.g. /dcp.schema.v1.SchemaService/WhoAmI
 *   REQUESTS  serialized request messages, each after its length as a 4-byte
 *             big-endian integer; sent in the file's order, cycling
 *   --metadata key=value   sent with every call (repeatable)
 *   --concurrency N        calls in flight (default 16)
 *   --seconds S            measured seconds (default 10)
 *   --warm-up S            seconds of calls before the measured ones (default 1)
 *
 * Every completed call is replaced at once by a new one, as wrk does, until the
 * measured seconds are over. A call counts when its status is OK and it ends
 * within the measured seconds; a call that ends with any other status, at any
 * time of the run, is counted as non-OK and the first one's status is reported.
 *
 * Prints on stdout, one figure a line:
 *   requests: N     seconds: S     rate: R     p50_ms: X     p99_ms: Y
 *   non_ok: K       first_failure: CODE (number): details   (only when K > 0)
 * Exits 2 on a usage error, 1 when the target cannot be reached or the
 * requests cannot be read, 0 otherwise (non-OK calls are a figure, not an error).
 */

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

/* A stuck server must not hang the bench. */
#define CALL_DEADLINE_SECONDS 10
#define CONNECT_DEADLINE_SECONDS 10
#define FAILURE_TEXT_LIMIT 1024
/* gRPC's own default limit on a message a server receives. */
#define MESSAGE_LIMIT (4u << 20)

static const char *const STATUS_NAMES[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

typedef struct {
    grpc_slice *messages;
    size_t count;
} requests_t;

/* One call in flight: what its batch writes into, and when it started. */
typedef struct {
    grpc_call *call;
    grpc_byte_buffer *request;
    grpc_byte_buffer *response;
    grpc_metadata_array initial_metadata;
    grpc_metadata_array trailing_metadata;
    grpc_status_code status;
    grpc_slice details;
    double started;
    int busy;
} slot_t;

typedef struct {
    double *values;
    size_t count;
    size_t capacity;
} latencies_t;

static void usage(const char *program) {
    fprintf(stderr,
            "usage: %s [--metadata key=value]... [--concurrency N] [--seconds S] [--warm-up S]"
            " TARGET METHOD REQUESTS\n"
            "  TARGET    host:port\n"
            "  METHOD    full method path, e.g. /dcp.schema.v1.SchemaService/WhoAmI\n"
            "  REQUESTS  file of serialized request messages, each after its length"
            " (4-byte big-endian)\n",
            program);
}

static double now_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static gpr_timespec seconds_from_now(int seconds) {
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(seconds, GPR_TIMESPAN));
}

static int parse_count(const char *text, long minimum, long *out) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < minimum) {
        return 0;
    }
    *out = value;
    return 1;
}

static int parse_seconds(const char *text, double minimum, double *out) {
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(value >= minimum) || value > 86400) {
        return 0;
    }
    *out = value;
    return 1;
}

static void free_requests(requests_t *requests) {
    for (size_t i = 0; i < requests->count; i++) {
        grpc_slice_unref(requests->messages[i]);
    }
    free(requests->messages);
    requests->messages = NULL;
    requests->count = 0;
}

/* Reads the length-prefixed messages; prints why and returns 0 when the file is not one. */
static int read_requests(const char *path, requests_t *requests) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        fprintf(stderr, "grpc_load: cannot open %s: %s\n", path, strerror(errno));
        return 0;
    }
    size_t capacity = 0;
    unsigned char *buffer = NULL;
    size_t buffer_size = 0;
    int ok = 1;
    requests->messages = NULL;
    requests->count = 0;
    for (;;) {
        unsigned char prefix[4];
        size_t got = fread(prefix, 1, sizeof prefix, file);
        if (got == 0 && feof(file)) {
            break;
        }
        if (got != sizeof prefix) {
            fprintf(stderr, "grpc_load: %s: truncated length after message %zu\n", path, requests->count);
            ok = 0;
            break;
        }
        size_t length = ((size_t)prefix[0] << 24) | ((size_t)prefix[1] << 16) | ((size_t)prefix[2] << 8) | prefix[3];
        if (length > MESSAGE_LIMIT) {
            fprintf(stderr, "grpc_load: %s: message %zu claims %zu bytes; not a requests file?\n", path,
                    requests->count, length);
            ok = 0;
            break;
        }
        if (length > buffer_size) {
            unsigned char *grown = realloc(buffer, length);
            if (grown == NULL) {
                fprintf(stderr, "grpc_load: out of memory reading %s\n", path);
                ok = 0;
                break;
            }
            buffer = grown;
            buffer_size = length;
        }
        if (length > 0 && fread(buffer, 1, length, file) != length) {
            fprintf(stderr, "grpc_load: %s: message %zu is shorter than its length %zu\n", path, requests->count,
                    length);
            ok = 0;
            break;
        }
        if (requests->count == capacity) {
            size_t grown_capacity = capacity ? capacity * 2 : 1024;
            grpc_slice *grown = realloc(requests->messages, grown_capacity * sizeof *grown);
            if (grown == NULL) {
                fprintf(stderr, "grpc_load: out of memory reading %s\n", path);
                ok = 0;
                break;
            }
            requests->messages = grown;
            capacity = grown_capacity;
        }
        requests->messages[requests->count++] = grpc_slice_from_copied_buffer((const char *)buffer, length);
    }
    if (ok && ferror(file)) {
        fprintf(stderr, "grpc_load: cannot read %s: %s\n", path, strerror(errno));
        ok = 0;
    }
    if (ok && requests->count == 0) {
        fprintf(stderr, "grpc_load: %s holds no request message\n", path);
        ok = 0;
    }
    free(buffer);
    fclose(file);
    if (!ok) {
        free_requests(requests);
    }
    return ok;
}

static void free_metadata(grpc_metadata *metadata, size_t count) {
    for (size_t i = 0; i < count; i++) {
        grpc_slice_unref(metadata[i].key);
        grpc_slice_unref(metadata[i].value);
    }
}

/* Splits each key=value; prints why and returns 0 when one is not metadata gRPC would send. */
static int parse_metadata(char **pairs, size_t count, grpc_metadata *metadata) {
    for (size_t i = 0; i < count; i++) {
        char *equals = strchr(pairs[i], '=');
        if (equals == NULL || equals == pairs[i]) {
            fprintf(stderr, "grpc_load: --metadata %s is not key=value\n", pairs[i]);
            free_metadata(metadata, i);
            return 0;
        }
        memset(&metadata[i], 0, sizeof metadata[i]);
        metadata[i].key = grpc_slice_from_copied_buffer(pairs[i], (size_t)(equals - pairs[i]));
        metadata[i].value = grpc_slice_from_copied_string(equals + 1);
        if (!grpc_header_key_is_legal(metadata[i].key) ||
            (!grpc_is_binary_header(metadata[i].key) && !grpc_header_nonbin_value_is_legal(metadata[i].value))) {
            fprintf(stderr, "grpc_load: --metadata %s: not a legal gRPC header (keys are lower case)\n", pairs[i]);
            free_metadata(metadata, i + 1);
            return 0;
        }
    }
    return 1;
}

static int record_latency(latencies_t *latencies, double seconds) {
    if (latencies->count == latencies->capacity) {
        size_t grown_capacity = latencies->capacity ? latencies->capacity * 2 : 65536;
        double *grown = realloc(latencies->values, grown_capacity * sizeof *grown);
        if (grown == NULL) {
            return 0;
        }
        latencies->values = grown;
        latencies->capacity = grown_capacity;
    }
    latencies->values[latencies->count++] = seconds;
    return 1;
}

static int compare_doubles(const void *a, const void *b) {
    double left = *(const double *)a, right = *(const double *)b;
    return (left > right) - (left < right);
}

/* The same rank the bench's Python figures use: the value at floor(fraction * n). */
static double percentile_ms(const latencies_t *sorted, double fraction) {
    if (sorted->count == 0) {
        return 0;
    }
    size_t index = (size_t)(fraction * (double)sorted->count);
    if (index >= sorted->count) {
        index = sorted->count - 1;
    }
    return sorted->values[index] * 1000;
}

/* Waits until the channel is connected; 0 when it fails to connect or the deadline passes. */
static int wait_until_connected(grpc_channel *channel, grpc_completion_queue *cq) {
    gpr_timespec deadline = seconds_from_now(CONNECT_DEADLINE_SECONDS);
    grpc_connectivity_state state = grpc_channel_check_connectivity_state(channel, 1);
    while (state != GRPC_CHANNEL_READY) {
        if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
            return 0;
        }
        grpc_channel_watch_connectivity_state(channel, state, deadline, cq, NULL);
        grpc_event event = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (event.type != GRPC_OP_COMPLETE || !event.success) {
            return 0; /* the deadline passed without a change */
        }
        state = grpc_channel_check_connectivity_state(channel, 1);
    }
    return 1;
}

static grpc_call_error start_call(slot_t *slot, grpc_channel *channel, grpc_completion_queue *cq, grpc_slice method,
                                  grpc_metadata *metadata, size_t metadata_count, grpc_slice message) {
    slot->call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                          seconds_from_now(CALL_DEADLINE_SECONDS), NULL);
    /* The call takes the message's slices: each call sends its own reference. */
    slot->request = grpc_raw_byte_buffer_create(&message, 1);
    slot->response = NULL;
    grpc_metadata_array_init(&slot->initial_metadata);
    grpc_metadata_array_init(&slot->trailing_metadata);
    slot->status = GRPC_STATUS_UNKNOWN;
    slot->details = grpc_empty_slice();

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = metadata_count;
    ops[0].data.send_initial_metadata.metadata = metadata;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = slot->request;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &slot->initial_metadata;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &slot->response;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &slot->trailing_metadata;
    ops[5].data.recv_status_on_client.status = &slot->status;
    ops[5].data.recv_status_on_client.status_details = &slot->details;

    slot->started = now_seconds();
    slot->busy = 1;
    return grpc_call_start_batch(slot->call, ops, 6, slot, NULL);
}

static void finish_call(slot_t *slot) {
    grpc_byte_buffer_destroy(slot->request);
    if (slot->response != NULL) {
        grpc_byte_buffer_destroy(slot->response);
    }
    grpc_metadata_array_destroy(&slot->initial_metadata);
    grpc_metadata_array_destroy(&slot->trailing_metadata);
    grpc_slice_unref(slot->details);
    grpc_call_unref(slot->call);
    slot->call = NULL;
    slot->request = NULL;
    slot->response = NULL;
    slot->busy = 0;
}

/* The status as one printable line: the code's name and number, then its details. */
static void describe_failure(const slot_t *slot, int batch_failed, char *text, size_t size) {
    if (batch_failed) {
        snprintf(text, size, "the call's batch failed without a status");
        return;
    }
    int code = (int)slot->status;
    const char *name =
        code >= 0 && (size_t)code < sizeof STATUS_NAMES / sizeof STATUS_NAMES[0] ? STATUS_NAMES[code] : "UNRECOGNIZED";
    int written = snprintf(text, size, "%s (%d): ", name, code);
    if (written < 0 || (size_t)written >= size) {
        return;
    }
    size_t length = GRPC_SLICE_LENGTH(slot->details);
    const unsigned char *details = GRPC_SLICE_START_PTR(slot->details);
    size_t at = (size_t)written;
    for (size_t i = 0; i < length && at + 1 < size; i++) {
        unsigned char c = details[i];
        text[at++] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c; /* one line per figure */
    }
    text[at] = '\0';
}

int main(int argc, char **argv) {
    long concurrency = 16;
    double seconds = 10, warm_up = 1;
    char **metadata_pairs = calloc((size_t)argc, sizeof *metadata_pairs);
    size_t metadata_count = 0;
    if (metadata_pairs == NULL) {
        fprintf(stderr, "grpc_load: out of memory\n");
        return 1;
    }
    static const struct option options[] = {
        {"metadata", required_argument, NULL, 'm'},
        {"concurrency", required_argument, NULL, 'c'},
        {"seconds", required_argument, NULL, 's'},
        {"warm-up", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int option;
    while ((option = getopt_long(argc, argv, "m:c:s:w:h", options, NULL)) != -1) {
        int valid = 1;
        switch (option) {
        case 'm':
            metadata_pairs[metadata_count++] = optarg;
            break;
        case 'c':
            valid = parse_count(optarg, 1, &concurrency) && concurrency <= 100000;
            break;
        case 's':
            valid = parse_seconds(optarg, 0.001, &seconds);
            break;
        case 'w':
            valid = parse_seconds(optarg, 0, &warm_up);
            break;
        case 'h':
            usage(argv[0]);
            free(metadata_pairs);
            return 0;
        default:
            valid = 0;
        }
        if (!valid) {
            if (option != '?') {
                fprintf(stderr, "grpc_load: invalid value for --%s: %s\n",
                        option == 'c' ? "concurrency" : option == 's' ? "seconds" : "warm-up", optarg);
            }
            usage(argv[0]);
            free(metadata_pairs);
            return 2;
        }
    }
    if (argc - optind != 3) {
        usage(argv[0]);
        free(metadata_pairs);
        return 2;
    }
    const char *target = argv[optind], *method_path = argv[optind + 1], *requests_path = argv[optind + 2];
    if (method_path[0] != '/' || strchr(method_path + 1, '/') == NULL) {
        fprintf(stderr, "grpc_load: METHOD must be a full path such as /package.Service/Method, not %s\n",
                method_path);
        free(metadata_pairs);
        return 2;
    }

    grpc_init();
    int exit_code = 0;
    grpc_metadata *metadata = calloc(metadata_count ? metadata_count : 1, sizeof *metadata);
    requests_t requests = {NULL, 0};
    slot_t *slots = calloc((size_t)concurrency, sizeof *slots);
    latencies_t latencies = {NULL, 0, 0};
    if (metadata == NULL || slots == NULL) {
        fprintf(stderr, "grpc_load: out of memory\n");
        free(metadata);
        free(slots);
        free(metadata_pairs);
        grpc_shutdown();
        return 1;
    }
    if (!parse_metadata(metadata_pairs, metadata_count, metadata)) {
        free(metadata);
        free(slots);
        free(metadata_pairs);
        grpc_shutdown();
        return 2;
    }
    if (!read_requests(requests_path, &requests)) {
        free_metadata(metadata, metadata_count);
        free(metadata);
        free(slots);
        free(metadata_pairs);
        grpc_shutdown();
        return 1;
    }

    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_channel_credentials *credentials = grpc_insecure_credentials_create();
    grpc_channel *channel = grpc_channel_create(target, credentials, NULL);
    grpc_channel_credentials_release(credentials);
    grpc_slice method = grpc_slice_from_copied_string(method_path);

    if (!wait_until_connected(channel, cq)) {
        fprintf(stderr, "grpc_load: cannot reach %s\n", target);
        exit_code = 1;
    } else {
        size_t next_request = 0, in_flight = 0;
        unsigned long long non_ok = 0;
        char first_failure[FAILURE_TEXT_LIMIT] = "";
        double began = now_seconds();
        double measured_from = began + warm_up, measured_until = measured_from + seconds;
        for (long i = 0; i < concurrency && exit_code == 0; i++) {
            grpc_call_error error = start_call(&slots[i], channel, cq, method, metadata, metadata_count,
                                               requests.messages[next_request]);
            next_request = (next_request + 1) % requests.count;
            if (error != GRPC_CALL_OK) {
                fprintf(stderr, "grpc_load: cannot start a call (grpc_call_error %d)\n", (int)error);
                finish_call(&slots[i]);
                exit_code = 1;
            } else {
                in_flight++;
            }
        }
        while (in_flight > 0) {
            grpc_event event = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
            if (event.type != GRPC_OP_COMPLETE) {
                fprintf(stderr, "grpc_load: the completion queue ended early\n");
                exit_code = 1;
                break;
            }
            slot_t *slot = event.tag;
            double finished = now_seconds();
            in_flight--;
            if (event.success && slot->status == GRPC_STATUS_OK) {
                if (finished >= measured_from && finished < measured_until &&
                    !record_latency(&latencies, finished - slot->started)) {
                    fprintf(stderr, "grpc_load: out of memory recording latencies\n");
                    exit_code = 1;
                }
            } else {
                if (non_ok++ == 0) {
                    describe_failure(slot, !event.success, first_failure, sizeof first_failure);
                }
            }
            finish_call(slot);
            if (finished < measured_until && exit_code == 0) {
                grpc_call_error error = start_call(slot, channel, cq, method, metadata, metadata_count,
                                                   requests.messages[next_request]);
                next_request = (next_request + 1) % requests.count;
                if (error != GRPC_CALL_OK) {
                    fprintf(stderr, "grpc_load: cannot start a call (grpc_call_error %d)\n", (int)error);
                    finish_call(slot);
                    exit_code = 1;
                } else {
                    in_flight++;
                }
            }
        }
        if (exit_code == 0) {
            qsort(latencies.values, latencies.count, sizeof *latencies.values, compare_doubles);
            printf("requests: %zu\n", latencies.count);
            printf("seconds: %.3f\n", seconds);
            printf("rate: %.2f\n", (double)latencies.count / seconds);
            printf("p50_ms: %.3f\n", percentile_ms(&latencies, 0.5));
            printf("p99_ms: %.3f\n", percentile_ms(&latencies, 0.99));
            printf("non_ok: %llu\n", non_ok);
            if (non_ok > 0) {
                printf("first_failure: %s\n", first_failure);
            }
            fflush(stdout);
        }
    }

    grpc_slice_unref(method);
    grpc_channel_destroy(channel);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    free_metadata(metadata, metadata_count);
    free(metadata);
    free(slots);
    free(latencies.values);
    free_requests(&requests);
    free(metadata_pairs);
    grpc_shutdown();
    return exit_code;
}
