/*
 * A fake libnvidia-ml.so.1 for testing gpu-agent's `gpu/` subsystem through
 * the real nvml-wrapper code path on machines without a GPU or driver.
 *
 * Build: gcc -shared -fPIC -o DIR/libnvidia-ml.so.1 fake_nvml.c
 *
 * The GPUs it reports come from a text file of `key=value` lines, re-read on
 * every call so that a test can change the GPUs under a running probe:
 *
 *   - `fake_nvml.state` next to the loaded library (found with dladdr), so
 *     that each test can load its own copy of the library with its own state;
 *   - else the file named by the environment variable FAKE_NVML_STATE;
 *   - else no file: one healthy GPU.
 *
 * Keys (GPU keys are `gpuN.<key>`; a value of `na` makes that reading return
 * NVML_ERROR_NOT_SUPPORTED):
 *
 *   count=2                   number of GPUs (default 1, at most 16)
 *   driver=550.54.15          nvmlSystemGetDriverVersion
 *   cuda=12040                nvmlSystemGetCudaDriverVersion_v2 (1000*major + 10*minor)
 *   fail_init=1               nvmlInit_v2 returns NVML_ERROR_DRIVER_NOT_LOADED
 *   fail_wait=N               the first N nvmlEventSetWait_v2 calls return NVML_ERROR_UNKNOWN
 *   hang_ms=N                 nvmlDeviceGetTemperature blocks N ms before it answers (a GPU
 *                             that fell off the bus: NVML calls that do not return)
 *   record_calls=1            keep per-function call counts in `fake_nvml.calls`
 *                             next to the library (updated on every call, and
 *                             carried over when the library is loaded again)
 *   gpuN.uuid=GPU-...         default GPU-fake-0000-N
 *   gpuN.name=...             default "NVIDIA H100 80GB HBM3"
 *   gpuN.mem_total_mib=81559  gpuN.mem_used_mib=0
 *   gpuN.temp=40              gpuN.dbe=0 (volatile uncorrected ECC)  gpuN.sbe=0
 *   gpuN.remap_pending=0      gpuN.remap_failed=0  gpuN.remap_corr=0  gpuN.remap_unc=0
 *   gpuN.retired_pending=0    gpuN.retired_sbe=0  gpuN.retired_dbe=0 (page counts)
 *   gpuN.pcie_width=16        gpuN.pcie_max=16
 *   gpuN.throttle=1           HW thermal slowdown in the clock throttle reasons
 *   gpuN.throttle_mask=0x4    the raw throttle reasons (overrides throttle)
 *   gpuN.persistence=1
 *   gpuN.events=na            the device supports no events (default: XID events)
 *   xid=<gpu index>:<code>    an XID event; appended lines are delivered once
 *                             each, in order, by nvmlEventSetWait_v2 to a set
 *                             the GPU is registered in
 *
 * Struct layouts and constants follow nvml.h (as vendored by nvml-wrapper-sys).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ---- nvml.h subset ---------------------------------------------------- */

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct nvmlEventSet_st *nvmlEventSet_t;
typedef unsigned int nvmlEnableState_t;        /* NVML_FEATURE_DISABLED = 0, ENABLED = 1 */
typedef unsigned int nvmlTemperatureSensors_t; /* NVML_TEMPERATURE_GPU = 0 */
typedef unsigned int nvmlMemoryErrorType_t;    /* CORRECTED = 0, UNCORRECTED = 1 */
typedef unsigned int nvmlEccCounterType_t;     /* VOLATILE = 0, AGGREGATE = 1 */
typedef unsigned int nvmlPageRetirementCause_t; /* MULTIPLE_SINGLE_BIT = 0, DOUBLE_BIT = 1 */

#define NVML_TEMPERATURE_GPU 0
#define NVML_MEMORY_ERROR_TYPE_CORRECTED 0
#define NVML_MEMORY_ERROR_TYPE_UNCORRECTED 1
#define NVML_VOLATILE_ECC 0
#define NVML_AGGREGATE_ECC 1
#define NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS 0
#define NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR 1

#define nvmlEventTypeSingleBitEccError 0x1ULL
#define nvmlEventTypeDoubleBitEccError 0x2ULL
#define nvmlEventTypePState 0x4ULL
#define nvmlEventTypeXidCriticalError 0x8ULL
#define DEFAULT_EVENTS                                                                      \
    (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | nvmlEventTypePState |    \
     nvmlEventTypeXidCriticalError)
#define nvmlClocksThrottleReasonSwThermalSlowdown 0x20ULL
#define nvmlClocksThrottleReasonHwThermalSlowdown 0x40ULL

typedef struct nvmlMemory_v2_st {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 (unsigned int)(sizeof(nvmlMemory_v2_t) | (2 << 24U))

typedef struct nvmlEventData_st {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

/* ---- state ------------------------------------------------------------ */

#define MAX_GPUS 16
#define MAX_PAIRS 512
#define MAX_XIDS 4096
#define MIB (1024ULL * 1024ULL)

struct nvmlDevice_st {
    unsigned int index;
};
struct nvmlEventSet_st {
    unsigned long long registered[MAX_GPUS]; /* event mask per GPU */
};

struct pair {
    char key[64];
    char value[128];
};
struct xid {
    unsigned int gpu;
    unsigned long long code;
};
struct state {
    int npairs;
    struct pair pairs[MAX_PAIRS];
    int nxids;
    struct xid xids[MAX_XIDS];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct state st;                 /* guarded by lock */
static struct nvmlDevice_st devs[MAX_GPUS];
static int init_count;                  /* nvmlInit_v2 minus nvmlShutdown */
static long xid_cursor;                 /* XID lines delivered (or skipped) so far */
static long wait_failures;              /* nvmlEventSetWait_v2 failures injected so far */

enum {
    C_INIT, C_SHUTDOWN, C_DRIVER, C_CUDA, C_COUNT, C_HANDLE, C_NAME, C_UUID, C_INDEX,
    C_MEMORY, C_TEMP, C_ECC, C_REMAP, C_RETIRED_PENDING, C_RETIRED, C_RETIRED_V2,
    C_PCIE, C_PCIE_MAX, C_THROTTLE, C_PERSISTENCE, C_SUPPORTED_EVENTS, C_REGISTER,
    C_SET_CREATE, C_SET_WAIT, C_SET_FREE, C_N
};
static const char *call_names[C_N] = {
    "nvmlInit_v2", "nvmlShutdown", "nvmlSystemGetDriverVersion",
    "nvmlSystemGetCudaDriverVersion_v2", "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
    "nvmlDeviceGetIndex", "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetRemappedRows",
    "nvmlDeviceGetRetiredPagesPendingStatus", "nvmlDeviceGetRetiredPages",
    "nvmlDeviceGetRetiredPages_v2", "nvmlDeviceGetCurrPcieLinkWidth",
    "nvmlDeviceGetMaxPcieLinkWidth", "nvmlDeviceGetCurrentClocksThrottleReasons",
    "nvmlDeviceGetPersistenceMode", "nvmlDeviceGetSupportedEventTypes",
    "nvmlDeviceRegisterEvents", "nvmlEventSetCreate", "nvmlEventSetWait_v2",
    "nvmlEventSetFree",
};
static unsigned long calls[C_N];

/* The directory this library was loaded from, with a trailing '/'. */
static const char *own_dir(void) {
    static char dir[4096];
    static int done;
    if (!done) {
        Dl_info info;
        done = 1;
        if (dladdr((void *)&own_dir, &info) && info.dli_fname) {
            const char *slash = strrchr(info.dli_fname, '/');
            if (slash && (size_t)(slash - info.dli_fname + 1) < sizeof dir) {
                memcpy(dir, info.dli_fname, (size_t)(slash - info.dli_fname + 1));
                dir[slash - info.dli_fname + 1] = '\0';
            }
        }
    }
    return dir;
}

static const char *state_path(void) {
    static char local[4200];
    struct stat sb;
    snprintf(local, sizeof local, "%sfake_nvml.state", own_dir());
    if (stat(local, &sb) == 0)
        return local;
    return getenv("FAKE_NVML_STATE");
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
}

static void copy_trunc(char *dst, size_t size, const char *src) {
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Re-reads the state file. Caller holds lock. */
static void load_state(void) {
    const char *path = state_path();
    FILE *f;
    char line[512];
    st.npairs = 0;
    st.nxids = 0;
    if (!path || !(f = fopen(path, "r")))
        return;
    while (fgets(line, sizeof line, f)) {
        char *eq, *key = line;
        trim(line);
        while (*key == ' ' || *key == '\t')
            key++;
        if (*key == '\0' || *key == '#' || !(eq = strchr(key, '=')))
            continue;
        *eq = '\0';
        if (strlen(key) >= sizeof st.pairs[0].key)
            continue;
        if (strcmp(key, "xid") == 0) {
            unsigned int gpu;
            unsigned long long code;
            if (st.nxids < MAX_XIDS && sscanf(eq + 1, "%u:%llu", &gpu, &code) == 2) {
                st.xids[st.nxids].gpu = gpu;
                st.xids[st.nxids].code = code;
                st.nxids++;
            }
            continue;
        }
        /* A later line for the same key wins. */
        int i;
        for (i = 0; i < st.npairs; i++)
            if (strcmp(st.pairs[i].key, key) == 0)
                break;
        if (i == st.npairs) {
            if (st.npairs == MAX_PAIRS)
                continue;
            st.npairs++;
        }
        copy_trunc(st.pairs[i].key, sizeof st.pairs[i].key, key);
        copy_trunc(st.pairs[i].value, sizeof st.pairs[i].value, eq + 1);
    }
    fclose(f);
}

static const char *get(const char *key) {
    for (int i = 0; i < st.npairs; i++)
        if (strcmp(st.pairs[i].key, key) == 0)
            return st.pairs[i].value;
    return NULL;
}

static const char *get_gpu(unsigned int gpu, const char *field) {
    char key[64];
    snprintf(key, sizeof key, "gpu%u.%s", gpu, field);
    return get(key);
}

/* 1: the value is "na" (reading not supported); 0: *out set (def when absent). */
static int num(const char *value, unsigned long long def, unsigned long long *out) {
    if (value && strcmp(value, "na") == 0)
        return 1;
    *out = value ? strtoull(value, NULL, 0) : def;
    return 0;
}

static int gpu_num(unsigned int gpu, const char *field, unsigned long long def,
                   unsigned long long *out) {
    return num(get_gpu(gpu, field), def, out);
}

static unsigned int gpu_count(void) {
    unsigned long long n = 1;
    num(get("count"), 1, &n);
    return n > MAX_GPUS ? MAX_GPUS : (unsigned int)n;
}

static int recording(void) {
    const char *rec = get("record_calls");
    return rec && strcmp(rec, "1") == 0;
}

static void calls_path(char *path, size_t size) {
    snprintf(path, size, "%sfake_nvml.calls", own_dir());
}

/* Counts go on from the calls file, so that they survive the library being
 * unloaded and loaded again (a failed init, a retry). */
static void read_calls(void) {
    static int done;
    char path[4200], line[256];
    FILE *f;
    if (done)
        return;
    done = 1;
    calls_path(path, sizeof path);
    if (!(f = fopen(path, "r")))
        return;
    while (fgets(line, sizeof line, f)) {
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        for (int i = 0; i < C_N; i++)
            if (strcmp(line, call_names[i]) == 0)
                calls[i] += strtoul(eq + 1, NULL, 10);
    }
    fclose(f);
}

static void write_calls(void) {
    char path[4200], tmp[4300];
    FILE *f;
    calls_path(path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!(f = fopen(tmp, "w")))
        return;
    for (int i = 0; i < C_N; i++)
        fprintf(f, "%s=%lu\n", call_names[i], calls[i]);
    fclose(f);
    rename(tmp, path);
}

/* Every entry point starts with this: lock, re-read the state, count the call. */
static void enter(int call) {
    pthread_mutex_lock(&lock);
    load_state();
    if (recording()) {
        read_calls();
        calls[call]++;
        write_calls();
    }
}

static nvmlReturn_t leave(nvmlReturn_t ret) {
    pthread_mutex_unlock(&lock);
    return ret;
}

/* Checks NVML is initialised and the handle is one of ours; sets *gpu. */
static nvmlReturn_t device_index(nvmlDevice_t device, unsigned int *gpu) {
    if (init_count <= 0)
        return NVML_ERROR_UNINITIALIZED;
    if (device < &devs[0] || device >= &devs[MAX_GPUS] || device->index >= gpu_count())
        return NVML_ERROR_INVALID_ARGUMENT;
    *gpu = device->index;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(const char *s, char *buf, unsigned int length) {
    if (!buf)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

/* A per-GPU number read into *out (of type T). */
#define GPU_READING(T, field, def, out)                                       \
    do {                                                                      \
        unsigned int gpu_;                                                    \
        unsigned long long v_;                                                \
        nvmlReturn_t r_ = device_index(device, &gpu_);                        \
        if (r_ != NVML_SUCCESS)                                               \
            return leave(r_);                                                 \
        if (!(out))                                                           \
            return leave(NVML_ERROR_INVALID_ARGUMENT);                        \
        if (gpu_num(gpu_, field, def, &v_))                                   \
            return leave(NVML_ERROR_NOT_SUPPORTED);                           \
        *(out) = (T)v_;                                                       \
        return leave(NVML_SUCCESS);                                           \
    } while (0)

/* ---- init and system -------------------------------------------------- */

nvmlReturn_t nvmlInit_v2(void) {
    const char *fail;
    enter(C_INIT);
    fail = get("fail_init");
    if (fail && strcmp(fail, "1") == 0)
        return leave(NVML_ERROR_DRIVER_NOT_LOADED);
    for (unsigned int i = 0; i < MAX_GPUS; i++)
        devs[i].index = i;
    init_count++;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlShutdown(void) {
    enter(C_SHUTDOWN);
    if (init_count <= 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    init_count--;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    const char *v;
    enter(C_DRIVER);
    if (init_count <= 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    v = get("driver");
    return leave(copy_string(v ? v : "550.54.15", version, length));
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    unsigned long long v;
    enter(C_CUDA);
    if (!cudaDriverVersion)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (num(get("cuda"), 12040, &v))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *cudaDriverVersion = (int)v;
    return leave(NVML_SUCCESS);
}

/* ---- devices ---------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    enter(C_COUNT);
    if (init_count <= 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (!deviceCount)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *deviceCount = gpu_count();
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    enter(C_HANDLE);
    if (init_count <= 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (!device || index >= gpu_count())
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *device = &devs[index];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    unsigned int gpu;
    nvmlReturn_t r;
    enter(C_INDEX);
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return leave(r);
    if (!index)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = gpu;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    unsigned int gpu;
    nvmlReturn_t r;
    const char *v;
    enter(C_NAME);
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return leave(r);
    v = get_gpu(gpu, "name");
    return leave(copy_string(v ? v : "NVIDIA H100 80GB HBM3", name, length));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    unsigned int gpu;
    nvmlReturn_t r;
    const char *v;
    char def[64];
    enter(C_UUID);
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return leave(r);
    snprintf(def, sizeof def, "GPU-fake-0000-%u", gpu);
    v = get_gpu(gpu, "uuid");
    return leave(copy_string(v ? v : def, uuid, length));
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    unsigned int gpu;
    nvmlReturn_t r;
    unsigned long long total, used;
    enter(C_MEMORY);
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return leave(r);
    if (!memory)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != nvmlMemory_v2)
        return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (gpu_num(gpu, "mem_total_mib", 81559, &total) || gpu_num(gpu, "mem_used_mib", 0, &used))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    memory->total = total * MIB;
    memory->reserved = 0;
    memory->used = used * MIB;
    memory->free = total > used ? (total - used) * MIB : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType,
                                      unsigned int *temp) {
    unsigned long long hang = 0;
    enter(C_TEMP);
    num(get("hang_ms"), 0, &hang);
    if (hang) {
        /* Without the lock, so that the XID watcher goes on. */
        struct timespec ts = {(time_t)(hang / 1000), (long)(hang % 1000) * 1000000L};
        pthread_mutex_unlock(&lock);
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&lock);
        load_state();
    }
    if (sensorType != NVML_TEMPERATURE_GPU)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    GPU_READING(unsigned int, "temp", 40, temp);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
                                         nvmlEccCounterType_t counterType,
                                         unsigned long long *eccCounts) {
    const char *field;
    enter(C_ECC);
    if (counterType != NVML_VOLATILE_ECC && counterType != NVML_AGGREGATE_ECC)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (errorType == NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        field = counterType == NVML_VOLATILE_ECC ? "dbe" : "dbe_aggregate";
    else if (errorType == NVML_MEMORY_ERROR_TYPE_CORRECTED)
        field = counterType == NVML_VOLATILE_ECC ? "sbe" : "sbe_aggregate";
    else
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    GPU_READING(unsigned long long, field, 0, eccCounts);
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows,
                                       unsigned int *uncRows, unsigned int *isPending,
                                       unsigned int *failureOccurred) {
    unsigned int gpu;
    nvmlReturn_t r;
    unsigned long long corr, unc, pending, failed;
    enter(C_REMAP);
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return leave(r);
    if (!corrRows || !uncRows || !isPending || !failureOccurred)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (gpu_num(gpu, "remap_corr", 0, &corr) || gpu_num(gpu, "remap_unc", 0, &unc) ||
        gpu_num(gpu, "remap_pending", 0, &pending) || gpu_num(gpu, "remap_failed", 0, &failed))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *corrRows = (unsigned int)corr;
    *uncRows = (unsigned int)unc;
    *isPending = pending ? 1 : 0;
    *failureOccurred = failed ? 1 : 0;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device,
                                                    nvmlEnableState_t *isPending) {
    enter(C_RETIRED_PENDING);
    GPU_READING(nvmlEnableState_t, "retired_pending", 0, isPending);
}

static nvmlReturn_t retired_pages(nvmlDevice_t device, nvmlPageRetirementCause_t cause,
                                  unsigned int *pageCount, unsigned long long *addresses,
                                  unsigned long long *timestamps) {
    unsigned int gpu;
    nvmlReturn_t r;
    unsigned long long n;
    const char *field;
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return r;
    if (!pageCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (cause == NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
        field = "retired_sbe";
    else if (cause == NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        field = "retired_dbe";
    else
        return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu_num(gpu, field, 0, &n))
        return NVML_ERROR_NOT_SUPPORTED;
    if (*pageCount < n) {
        *pageCount = (unsigned int)n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *pageCount = (unsigned int)n;
    for (unsigned long long i = 0; i < n; i++) {
        if (addresses)
            addresses[i] = 0x1000ULL * (i + 1);
        if (timestamps)
            timestamps[i] = 1700000000ULL + i;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device, nvmlPageRetirementCause_t cause,
                                       unsigned int *pageCount, unsigned long long *addresses) {
    enter(C_RETIRED);
    return leave(retired_pages(device, cause, pageCount, addresses, NULL));
}

nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t device, nvmlPageRetirementCause_t cause,
                                          unsigned int *pageCount, unsigned long long *addresses,
                                          unsigned long long *timestamps) {
    enter(C_RETIRED_V2);
    return leave(retired_pages(device, cause, pageCount, addresses, timestamps));
}

nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *currLinkWidth) {
    enter(C_PCIE);
    GPU_READING(unsigned int, "pcie_width", 16, currLinkWidth);
}

nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t device, unsigned int *maxLinkWidth) {
    enter(C_PCIE_MAX);
    GPU_READING(unsigned int, "pcie_max", 16, maxLinkWidth);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                       unsigned long long *clocksThrottleReasons) {
    unsigned int gpu;
    nvmlReturn_t r;
    unsigned long long thermal, mask;
    enter(C_THROTTLE);
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return leave(r);
    if (!clocksThrottleReasons)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (gpu_num(gpu, "throttle", 0, &thermal))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    if (gpu_num(gpu, "throttle_mask", thermal ? nvmlClocksThrottleReasonHwThermalSlowdown : 0,
                &mask))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *clocksThrottleReasons = mask;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, nvmlEnableState_t *mode) {
    enter(C_PERSISTENCE);
    GPU_READING(nvmlEnableState_t, "persistence", 1, mode);
}

/* ---- events ----------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
                                              unsigned long long *eventTypes) {
    enter(C_SUPPORTED_EVENTS);
    GPU_READING(unsigned long long, "events", DEFAULT_EVENTS, eventTypes);
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    enter(C_SET_CREATE);
    if (init_count <= 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (!set)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *set = calloc(1, sizeof **set);
    return leave(*set ? NVML_SUCCESS : NVML_ERROR_UNKNOWN);
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                      nvmlEventSet_t set) {
    unsigned int gpu;
    nvmlReturn_t r;
    unsigned long long supported;
    enter(C_REGISTER);
    if ((r = device_index(device, &gpu)) != NVML_SUCCESS)
        return leave(r);
    if (!set)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (gpu_num(gpu, "events", DEFAULT_EVENTS, &supported) ||
        (eventTypes & ~supported))
        return leave(NVML_ERROR_NOT_SUPPORTED);
    set->registered[gpu] |= eventTypes;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    unsigned long long fail;
    struct timespec ts;
    enter(C_SET_WAIT);
    if (init_count <= 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    if (!set || !data)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (!num(get("fail_wait"), 0, &fail) && wait_failures < (long)fail) {
        wait_failures++;
        return leave(NVML_ERROR_UNKNOWN);
    }
    while (xid_cursor < st.nxids) {
        struct xid x = st.xids[xid_cursor++];
        if (x.gpu >= gpu_count() || !(set->registered[x.gpu] & nvmlEventTypeXidCriticalError))
            continue; /* no set listens for it: lost, as with the real driver */
        memset(data, 0, sizeof *data);
        data->device = &devs[x.gpu];
        data->eventType = nvmlEventTypeXidCriticalError;
        data->eventData = x.code;
        data->gpuInstanceId = 0xFFFFFFFFU;
        data->computeInstanceId = 0xFFFFFFFFU;
        return leave(NVML_SUCCESS);
    }
    pthread_mutex_unlock(&lock);
    if (timeoutms > 200)
        timeoutms = 200;
    ts.tv_sec = timeoutms / 1000;
    ts.tv_nsec = (long)(timeoutms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
    return NVML_ERROR_TIMEOUT;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    enter(C_SET_FREE);
    free(set);
    return leave(NVML_SUCCESS);
}
