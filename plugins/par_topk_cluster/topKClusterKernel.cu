/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * par::TopKCluster kernels. One block per image selects the centers (bitonic sort
 * of (score, index) in shared memory, N <= 4096); one warp per token routes it to
 * the most similar center; one block per (image, slot) merges the slot's members
 * in index order, so results are deterministic (no atomics on floats).
 */
#include "topKClusterKernel.h"

#include <cfloat>
#include <climits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace par
{
namespace kernels
{

constexpr int32_t kSELECT_THREADS = 1024;
constexpr int32_t kWARP = 32;
constexpr int32_t kMERGE_THREADS = 256;
constexpr float kNORM_EPS = 1e-6F; // as F.normalize in the reference

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
__device__ __forceinline__ float toFloat(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}
template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16(v);
}

//! True when (keyA, idxA) ranks before (keyB, idxB): higher score first, lower index on ties.
__device__ __forceinline__ bool ranksBefore(float keyA, int32_t idxA, float keyB, int32_t idxB)
{
    return keyA > keyB || (keyA == keyB && idxA < idxB);
}

__device__ __forceinline__ float warpSum(float v)
{
    for (int32_t offset = kWARP / 2; offset > 0; offset /= 2)
    {
        v += __shfl_xor_sync(0xffffffffU, v, offset);
    }
    return v;
}

template <typename Op>
__device__ float blockReduce(float v, float* scratch, Op op)
{
    int32_t const lane = threadIdx.x % kWARP;
    int32_t const warp = threadIdx.x / kWARP;
    for (int32_t offset = kWARP / 2; offset > 0; offset /= 2)
    {
        v = op(v, __shfl_xor_sync(0xffffffffU, v, offset));
    }
    if (lane == 0)
    {
        scratch[warp] = v;
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        float total = scratch[0];
        for (int32_t w = 1; w < static_cast<int32_t>(blockDim.x) / kWARP; ++w)
        {
            total = op(total, scratch[w]);
        }
        scratch[0] = total;
    }
    __syncthreads();
    float const result = scratch[0];
    __syncthreads();
    return result;
}

template <typename IndexT>
__device__ __forceinline__ int32_t clampedK(IndexT requested, int32_t kMax, int32_t n)
{
    int64_t const upper = kMax < n ? kMax : n;
    int64_t k = static_cast<int64_t>(requested);
    k = k < 1 ? 1 : (k > upper ? upper : k);
    return static_cast<int32_t>(k);
}

//! Grid [B], block kSELECT_THREADS. Writes keepIndex [B, kMax] (ascending, -1 padded),
//! numKeptOut [B] and centerSlot [B, N] (slot of each center, -1 otherwise).
template <typename IndexT>
__global__ void selectCentersKernel(float const* scores, IndexT const* numKeptIn, int32_t n, int32_t kMax,
    int32_t padded, IndexT* keepIndex, IndexT* numKeptOut, int32_t* centerSlot)
{
    extern __shared__ unsigned char shared[];
    float* key = reinterpret_cast<float*>(shared);
    int32_t* idx = reinterpret_cast<int32_t*>(key + padded);
    unsigned char* selected = reinterpret_cast<unsigned char*>(idx + padded);
    __shared__ int32_t chunkOffset[kSELECT_THREADS];

    int32_t const b = blockIdx.x;
    int32_t const tid = threadIdx.x;
    float const* row = scores + static_cast<size_t>(b) * n;
    for (int32_t i = tid; i < padded; i += blockDim.x)
    {
        float v = i < n ? row[i] : -FLT_MAX;
        key[i] = isnan(v) ? -FLT_MAX : v;
        idx[i] = i < n ? i : INT_MAX;
    }
    __syncthreads();

    for (int32_t size = 2; size <= padded; size <<= 1)
    {
        for (int32_t stride = size >> 1; stride > 0; stride >>= 1)
        {
            for (int32_t i = tid; i < padded; i += blockDim.x)
            {
                int32_t const j = i ^ stride;
                if (j > i)
                {
                    bool const forward = (i & size) == 0;
                    bool const jFirst = ranksBefore(key[j], idx[j], key[i], idx[i]);
                    if (forward == jFirst)
                    {
                        float const k0 = key[i];
                        key[i] = key[j];
                        key[j] = k0;
                        int32_t const i0 = idx[i];
                        idx[i] = idx[j];
                        idx[j] = i0;
                    }
                }
            }
            __syncthreads();
        }
    }

    int32_t const k = clampedK(numKeptIn[b], kMax, n);
    for (int32_t i = tid; i < n; i += blockDim.x)
    {
        selected[i] = 0;
    }
    __syncthreads();
    for (int32_t r = tid; r < k; r += blockDim.x)
    {
        selected[idx[r]] = 1;
    }
    __syncthreads();

    // Slots in index order: an exclusive scan of `selected` over contiguous chunks.
    int32_t const chunk = (n + blockDim.x - 1) / blockDim.x;
    int32_t const begin = tid * chunk;
    int32_t const end = begin + chunk < n ? begin + chunk : n;
    int32_t count = 0;
    for (int32_t i = begin; i < end; ++i)
    {
        count += selected[i];
    }
    chunkOffset[tid] = count;
    __syncthreads();
    if (tid == 0)
    {
        int32_t running = 0;
        for (int32_t t = 0; t < static_cast<int32_t>(blockDim.x); ++t)
        {
            int32_t const c = chunkOffset[t];
            chunkOffset[t] = running;
            running += c;
        }
    }
    __syncthreads();
    int32_t slot = chunkOffset[tid];
    IndexT* keepRow = keepIndex + static_cast<size_t>(b) * kMax;
    int32_t* slotRow = centerSlot + static_cast<size_t>(b) * n;
    for (int32_t i = begin; i < end; ++i)
    {
        if (selected[i])
        {
            keepRow[slot] = static_cast<IndexT>(i);
            slotRow[i] = slot++;
        }
        else
        {
            slotRow[i] = -1;
        }
    }
    for (int32_t j = k + tid; j < kMax; j += blockDim.x)
    {
        keepRow[j] = static_cast<IndexT>(-1);
    }
    if (tid == 0)
    {
        numKeptOut[b] = static_cast<IndexT>(k);
    }
}

//! One warp per token: invNorm [B*N] = 1 / max(||x||, eps).
template <typename T>
__global__ void inverseNormKernel(T const* tokens, int32_t rows, int32_t dim, float* invNorm)
{
    int32_t const row = (blockIdx.x * blockDim.x + threadIdx.x) / kWARP;
    int32_t const lane = threadIdx.x % kWARP;
    if (row >= rows)
    {
        return;
    }
    T const* x = tokens + static_cast<size_t>(row) * dim;
    float sum = 0.F;
    for (int32_t d = lane; d < dim; d += kWARP)
    {
        float const v = toFloat(x[d]);
        sum += v * v;
    }
    sum = warpSum(sum);
    if (lane == 0)
    {
        invNorm[row] = 1.F / fmaxf(sqrtf(sum), kNORM_EPS);
    }
}

//! One warp per token: assignment = own slot for centers, else the most similar
//! center's slot (lowest slot on ties), or -1 when dropped. `tokens` are the routing tokens
//! [B, N, p.routeDim] (the cluster tokens, or the merged tokens themselves).
template <typename T, typename IndexT>
__global__ void routeKernel(T const* tokens, float const* relevance, float const* invNorm, IndexT const* keepIndex,
    IndexT const* numKept, int32_t const* centerSlot, TopKClusterParams p, IndexT* assignment)
{
    int32_t const row = (blockIdx.x * blockDim.x + threadIdx.x) / kWARP;
    int32_t const lane = threadIdx.x % kWARP;
    if (row >= p.batch * p.numTokens)
    {
        return;
    }
    int32_t const b = row / p.numTokens;
    int32_t result = centerSlot[row];
    if (result < 0 && p.router == RouterMode::kMERGE && relevance[row] > -p.gamma)
    {
        T const* x = tokens + static_cast<size_t>(row) * p.routeDim;
        int32_t const k = static_cast<int32_t>(numKept[b]);
        float best = -FLT_MAX;
        int32_t bestSlot = 0;
        for (int32_t j = 0; j < k; ++j)
        {
            int32_t const center = b * p.numTokens + static_cast<int32_t>(keepIndex[static_cast<size_t>(b) * p.kMax + j]);
            T const* c = tokens + static_cast<size_t>(center) * p.routeDim;
            float dot = 0.F;
            for (int32_t d = lane; d < p.routeDim; d += kWARP)
            {
                dot += toFloat(x[d]) * toFloat(c[d]);
            }
            float const similarity = warpSum(dot) * invNorm[row] * invNorm[center];
            if (similarity > best)
            {
                best = similarity;
                bestSlot = j;
            }
        }
        result = bestSlot;
    }
    if (lane == 0)
    {
        assignment[row] = static_cast<IndexT>(result);
    }
}

//! Grid [kMax, B], block kMERGE_THREADS: slot j of image b = softmax(relevance / tau)-weighted
//! mean of its members (zeros for j >= K).
template <typename T, typename IndexT>
__global__ void mergeKernel(T const* tokens, float const* relevance, IndexT const* assignment, IndexT const* numKept,
    TopKClusterParams p, T* merged)
{
    __shared__ int32_t members[kMAX_TOKENS];
    __shared__ float weights[kMAX_TOKENS];
    __shared__ int32_t warpCount[kMERGE_THREADS / kWARP];
    __shared__ float scratch[kMERGE_THREADS / kWARP];
    __shared__ int32_t total;

    int32_t const j = blockIdx.x;
    int32_t const b = blockIdx.y;
    int32_t const tid = threadIdx.x;
    int32_t const lane = tid % kWARP;
    int32_t const warp = tid / kWARP;
    T* out = merged + (static_cast<size_t>(b) * p.kMax + j) * p.dim;
    if (j >= static_cast<int32_t>(numKept[b]))
    {
        for (int32_t d = tid; d < p.dim; d += blockDim.x)
        {
            out[d] = fromFloat<T>(0.F);
        }
        return;
    }

    // Members of slot j in ascending token order (ballot compaction, tile by tile).
    IndexT const* row = assignment + static_cast<size_t>(b) * p.numTokens;
    if (tid == 0)
    {
        total = 0;
    }
    __syncthreads();
    for (int32_t tile = 0; tile < p.numTokens; tile += blockDim.x)
    {
        int32_t const i = tile + tid;
        bool const member = i < p.numTokens && static_cast<int32_t>(row[i]) == j;
        unsigned const ballot = __ballot_sync(0xffffffffU, member);
        if (lane == 0)
        {
            warpCount[warp] = __popc(ballot);
        }
        __syncthreads();
        int32_t offset = total;
        for (int32_t w = 0; w < warp; ++w)
        {
            offset += warpCount[w];
        }
        if (member)
        {
            members[offset + __popc(ballot & ((1U << lane) - 1U))] = i;
        }
        __syncthreads();
        if (tid == 0)
        {
            for (int32_t w = 0; w < static_cast<int32_t>(blockDim.x) / kWARP; ++w)
            {
                total += warpCount[w];
            }
        }
        __syncthreads();
    }
    int32_t const count = total;

    float const* z = relevance + static_cast<size_t>(b) * p.numTokens;
    float localMax = -FLT_MAX;
    for (int32_t m = tid; m < count; m += blockDim.x)
    {
        localMax = fmaxf(localMax, z[members[m]] / p.tau);
    }
    float const clusterMax = blockReduce(localMax, scratch, [](float a, float c) { return fmaxf(a, c); });
    float localSum = 0.F;
    for (int32_t m = tid; m < count; m += blockDim.x)
    {
        float const w = expf(z[members[m]] / p.tau - clusterMax);
        weights[m] = w;
        localSum += w;
    }
    float const weightSum = blockReduce(localSum, scratch, [](float a, float c) { return a + c; });

    T const* image = tokens + static_cast<size_t>(b) * p.numTokens * p.dim;
    for (int32_t d = tid; d < p.dim; d += blockDim.x)
    {
        float acc = 0.F;
        for (int32_t m = 0; m < count; ++m)
        {
            acc += weights[m] * toFloat(image[static_cast<size_t>(members[m]) * p.dim + d]);
        }
        out[d] = fromFloat<T>(acc / fmaxf(weightSum, FLT_MIN));
    }
}

int32_t nextPowerOfTwo(int32_t v)
{
    int32_t p = 1;
    while (p < v)
    {
        p <<= 1;
    }
    return p;
}

template <typename T, typename IndexT>
cudaError_t launch(TopKClusterParams const& p, T const* tokens, float const* scores, float const* relevance,
    IndexT const* numKeptIn, T const* routeTokens, T* merged, IndexT* keepIndex, IndexT* assignment,
    IndexT* numKeptOut, void* workspace, cudaStream_t stream)
{
    int32_t* centerSlot = static_cast<int32_t*>(workspace);
    float* invNorm = reinterpret_cast<float*>(centerSlot + static_cast<size_t>(p.batch) * p.numTokens);
    int32_t const padded = nextPowerOfTwo(p.numTokens);
    size_t const selectShared = static_cast<size_t>(padded) * (sizeof(float) + sizeof(int32_t)) + p.numTokens;
    selectCentersKernel<IndexT><<<p.batch, kSELECT_THREADS, selectShared, stream>>>(
        scores, numKeptIn, p.numTokens, p.kMax, padded, keepIndex, numKeptOut, centerSlot);

    int32_t const rows = p.batch * p.numTokens;
    int32_t const warpsPerBlock = 8;
    int32_t const rowBlocks = (rows + warpsPerBlock - 1) / warpsPerBlock;
    if (p.router == RouterMode::kMERGE)
    {
        inverseNormKernel<T><<<rowBlocks, warpsPerBlock * kWARP, 0, stream>>>(routeTokens, rows, p.routeDim, invNorm);
    }
    routeKernel<T, IndexT><<<rowBlocks, warpsPerBlock * kWARP, 0, stream>>>(
        routeTokens, relevance, invNorm, keepIndex, numKeptOut, centerSlot, p, assignment);
    mergeKernel<T, IndexT><<<dim3(p.kMax, p.batch), kMERGE_THREADS, 0, stream>>>(
        tokens, relevance, assignment, numKeptOut, p, merged);
    return cudaGetLastError();
}

template <typename T>
cudaError_t dispatchIndex(TopKClusterParams const& p, IndexType indexType, void const* tokens, float const* scores,
    float const* relevance, void const* numKeptIn, void const* clusterTokens, void* merged, void* keepIndex,
    void* assignment, void* numKeptOut, void* workspace, cudaStream_t stream)
{
    auto const* x = static_cast<T const*>(tokens);
    auto const* route = clusterTokens != nullptr ? static_cast<T const*>(clusterTokens) : x;
    auto* out = static_cast<T*>(merged);
    if (indexType == IndexType::kINT64)
    {
        return launch<T, int64_t>(p, x, scores, relevance, static_cast<int64_t const*>(numKeptIn), route, out,
            static_cast<int64_t*>(keepIndex), static_cast<int64_t*>(assignment), static_cast<int64_t*>(numKeptOut),
            workspace, stream);
    }
    return launch<T, int32_t>(p, x, scores, relevance, static_cast<int32_t const*>(numKeptIn), route, out,
        static_cast<int32_t*>(keepIndex), static_cast<int32_t*>(assignment), static_cast<int32_t*>(numKeptOut),
        workspace, stream);
}

} // namespace kernels

size_t topKClusterWorkspaceSize(int32_t batch, int32_t numTokens)
{
    return static_cast<size_t>(batch) * numTokens * (sizeof(int32_t) + sizeof(float));
}

cudaError_t launchTopKCluster(TopKClusterParams const& params, TokenType tokenType, IndexType indexType,
    void const* tokens, float const* scores, float const* relevance, void const* numKeptIn, void const* clusterTokens,
    void* merged, void* keepIndex, void* assignment, void* numKeptOut, void* workspace, cudaStream_t stream)
{
    if (params.batch < 1 || params.numTokens < 2 || params.numTokens > kMAX_TOKENS || params.dim < 1
        || params.kMax < 1 || !(params.tau > 0.F) || params.routeDim < 1
        || (clusterTokens == nullptr && params.routeDim != params.dim))
    {
        return cudaErrorInvalidValue;
    }
    switch (tokenType)
    {
    case TokenType::kFLOAT32:
        return kernels::dispatchIndex<float>(params, indexType, tokens, scores, relevance, numKeptIn, clusterTokens,
            merged, keepIndex, assignment, numKeptOut, workspace, stream);
    case TokenType::kFLOAT16:
        return kernels::dispatchIndex<__half>(params, indexType, tokens, scores, relevance, numKeptIn, clusterTokens,
            merged, keepIndex, assignment, numKeptOut, workspace, stream);
    case TokenType::kBFLOAT16:
        return kernels::dispatchIndex<__nv_bfloat16>(params, indexType, tokens, scores, relevance, numKeptIn, clusterTokens,
            merged, keepIndex, assignment, numKeptOut, workspace, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace par

extern "C" int32_t parTopKClusterLaunchClustered(int32_t batch, int32_t numTokens, int32_t dim, int32_t kMax,
    float gamma, float tau, int32_t router, int32_t tokenType, int32_t indexType, void const* tokens,
    float const* scores, float const* relevance, void const* numKeptIn, void const* clusterTokens, int32_t routeDim,
    void* merged, void* keepIndex, void* assignment, void* numKeptOut, void* workspace, cudaStream_t stream)
{
    par::TopKClusterParams const params{batch, numTokens, dim, kMax, gamma, tau,
        router == 1 ? par::RouterMode::kKEEP : par::RouterMode::kMERGE, routeDim};
    return static_cast<int32_t>(par::launchTopKCluster(params, static_cast<par::TokenType>(tokenType),
        static_cast<par::IndexType>(indexType), tokens, scores, relevance, numKeptIn, clusterTokens, merged, keepIndex,
        assignment, numKeptOut, workspace, stream));
}

extern "C" int32_t parTopKClusterLaunch(int32_t batch, int32_t numTokens, int32_t dim, int32_t kMax, float gamma,
    float tau, int32_t router, int32_t tokenType, int32_t indexType, void const* tokens, float const* scores,
    float const* relevance, void const* numKeptIn, void* merged, void* keepIndex, void* assignment,
    void* numKeptOut, void* workspace, cudaStream_t stream)
{
    return parTopKClusterLaunchClustered(batch, numTokens, dim, kMax, gamma, tau, router, tokenType, indexType, tokens,
        scores, relevance, numKeptIn, nullptr, dim, merged, keepIndex, assignment, numKeptOut, workspace, stream);
}

extern "C" size_t parTopKClusterWorkspaceSize(int32_t batch, int32_t numTokens)
{
    return par::topKClusterWorkspaceSize(batch, numTokens);
}
