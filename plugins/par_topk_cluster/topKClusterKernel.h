/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * CUDA kernels of par::TopKCluster (PAR steps 5-6): top-K centers by score with a
 * per-image dynamic K, routing of every token to its most similar center, and the
 * relevance-weighted merge. Semantics: par_export/reduce/topk_cluster.py. Similarities to
 * the centers come from the optional cluster tokens [B, N, Dc] (the same tokens in another
 * space: LLaVA's tower tokens of projected rows), else from the tokens that are merged.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime.h>

namespace par
{

//! Largest token count per image the center-selection kernel sorts in shared memory.
constexpr int32_t kMAX_TOKENS = 4096;

enum class RouterMode : int32_t
{
    kMERGE = 0, //!< every routed token is merged into its center
    kKEEP = 1,  //!< centers are kept unmerged, all other tokens dropped
};

enum class TokenType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
    kBFLOAT16 = 2,
};

enum class IndexType : int32_t
{
    kINT32 = 0,
    kINT64 = 1,
};

struct TopKClusterParams
{
    int32_t batch;     //!< B
    int32_t numTokens; //!< N, 2 <= N <= kMAX_TOKENS
    int32_t dim;       //!< D
    int32_t kMax;      //!< output width; per-image K is clamped to [1, min(kMax, N)]
    float gamma;       //!< non-center tokens with relevance <= -gamma are dropped
    float tau;         //!< merge weights softmax(relevance / tau) within a cluster
    RouterMode router;
    int32_t routeDim;  //!< Dc of the tokens routing compares (D when they are the merged tokens)
};

//! Bytes of scratch memory launchTopKCluster needs.
size_t topKClusterWorkspaceSize(int32_t batch, int32_t numTokens);

//! Runs the op on `stream`. Pointers are device pointers, row-major:
//! tokens [B, N, D] (tokenType), scores [B, N] float, relevance [B, N] float,
//! numKeptIn [B] (indexType), clusterTokens [B, N, routeDim] (tokenType) or nullptr (route on
//! tokens) -> merged [B, kMax, D] (tokenType), keepIndex [B, kMax], assignment [B, N],
//! numKeptOut [B] (indexType).
//! Returns cudaErrorInvalidValue for parameters outside the documented limits.
cudaError_t launchTopKCluster(TopKClusterParams const& params, TokenType tokenType, IndexType indexType,
    void const* tokens, float const* scores, float const* relevance, void const* numKeptIn, void const* clusterTokens,
    void* merged, void* keepIndex, void* assignment, void* numKeptOut, void* workspace, cudaStream_t stream);

} // namespace par

//! C entry point for tests and non-TensorRT callers (ctypes): same as par::launchTopKCluster.
extern "C" int32_t parTopKClusterLaunch(int32_t batch, int32_t numTokens, int32_t dim, int32_t kMax, float gamma,
    float tau, int32_t router, int32_t tokenType, int32_t indexType, void const* tokens, float const* scores,
    float const* relevance, void const* numKeptIn, void* merged, void* keepIndex, void* assignment,
    void* numKeptOut, void* workspace, cudaStream_t stream);

//! The same with cluster tokens [B, N, routeDim] that routing compares (nullptr: the tokens).
extern "C" int32_t parTopKClusterLaunchClustered(int32_t batch, int32_t numTokens, int32_t dim, int32_t kMax,
    float gamma, float tau, int32_t router, int32_t tokenType, int32_t indexType, void const* tokens,
    float const* scores, float const* relevance, void const* numKeptIn, void const* clusterTokens, int32_t routeDim,
    void* merged, void* keepIndex, void* assignment, void* numKeptOut, void* workspace, cudaStream_t stream);

extern "C" size_t parTopKClusterWorkspaceSize(int32_t batch, int32_t numTokens);
