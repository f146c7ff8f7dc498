/* qir model library C ABI, version 1.
 *
 * A model library (model.so, or model.o for static linking) is one compiled graph: the generated
 * kernels, the packed weights (a constant blob inside the library) and the functions below.
 * qir.targets.kryo.library.build_model_library writes it, for x86_64 (the build host's CPU
 * features) or AArch64 (NEON). The library needs only the C library (posix_memalign, free,
 * memcpy, memset) and libm.
 *
 * Usage:
 *
 *     qir_model *m = qir_model_create();           // NULL: out of memory
 *     const void *in[] = {image};                   // one pointer per input, in spec order
 *     void *out[] = {logits};                       // one pointer per output, in spec order
 *     if (qir_model_run(m, in, out) != QIR_MODEL_OK) ...
 *     qir_model_destroy(m);
 *
 * Tensors are dense, row-major (C order) arrays of the spec's dtype and dims; shapes are fixed
 * when the library is built. Inputs are only read; outputs are written completely; an output
 * buffer may not overlap an input.
 *
 * Threads: the generated code runs single-threaded on the calling thread. A qir_model holds the
 * working memory (arena) of one run: use one qir_model per thread (the weights are shared,
 * read-only); calls on different models may run concurrently, calls on the same model may not.
 *
 * Compatibility: check qir_model_abi_version() == QIR_MODEL_ABI_VERSION after loading a library.
 * Version 1 adds nothing to the structs or functions below without bumping the version.
 */
#ifndef QIR_MODEL_ABI_H
#define QIR_MODEL_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QIR_MODEL_ABI_VERSION 1

/* qir_model_run results */
#define QIR_MODEL_OK 0
#define QIR_MODEL_EINVAL (-1) /* a NULL model, array, or tensor pointer */

/* Element types (qir_tensor_spec.dtype); itemsize in brackets. */
enum qir_dtype {
  QIR_DTYPE_FLOAT32 = 1, /* [4] */
  QIR_DTYPE_FLOAT16 = 2, /* [2] */
  QIR_DTYPE_INT8 = 3,    /* [1] */
  QIR_DTYPE_UINT8 = 4,   /* [1] */
  QIR_DTYPE_INT32 = 5,   /* [4] */
  QIR_DTYPE_INT64 = 6,   /* [8] */
  QIR_DTYPE_BOOL = 7,    /* [1] */
  QIR_DTYPE_FLOAT64 = 8, /* [8] */
  QIR_DTYPE_INT16 = 9,   /* [2] */
  QIR_DTYPE_UINT16 = 10, /* [2] */
};

/* One input or output of the model. All pointers point into the library's constant data. */
typedef struct qir_tensor_spec {
  const char *name;    /* the graph value's name, NUL-terminated */
  int32_t dtype;       /* enum qir_dtype */
  int32_t rank;        /* number of dims (0: a scalar) */
  const int64_t *dims; /* rank dims */
  int64_t nbytes;      /* itemsize * product of dims: the size of the caller's buffer */
} qir_tensor_spec;

typedef struct qir_model qir_model; /* opaque */

/* QIR_MODEL_ABI_VERSION of the library. */
uint32_t qir_model_abi_version(void);

int32_t qir_model_num_inputs(void);
int32_t qir_model_num_outputs(void);
/* The spec of input/output i, or NULL when i is out of range. */
const qir_tensor_spec *qir_model_input_spec(int32_t i);
const qir_tensor_spec *qir_model_output_spec(int32_t i);

/* Bytes of working memory one qir_model allocates. */
int64_t qir_model_arena_bytes(void);

/* A model ready to run (its arena allocated and zeroed); NULL when out of memory. */
qir_model *qir_model_create(void);

/* Runs the graph: inputs[i] points to input i, outputs[j] to the caller's buffer for output j
 * (qir_model_output_spec(j)->nbytes bytes). Returns QIR_MODEL_OK, or QIR_MODEL_EINVAL without
 * running when model, inputs, outputs or any tensor pointer is NULL. */
int32_t qir_model_run(qir_model *model, const void *const *inputs, void *const *outputs);

/* Frees the model's arena (NULL is ignored). */
void qir_model_destroy(qir_model *model);

#ifdef __cplusplus
}
#endif

#endif /* QIR_MODEL_ABI_H */
