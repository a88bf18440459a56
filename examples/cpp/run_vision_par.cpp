/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Runs a vision_par TensorRT engine (from `par-export build`) on one input and prints K and
 * the first values of the reduced embeddings.
 *
 *   run_vision_par ENGINE [PLUGIN_LIBRARY] [BUDGET]
 *
 * Inputs are synthetic (zeros for pixels and query, i.e. the no-prompt fallback); a real
 * caller fills pixel_values with the preprocessed image and query_embeds with the output
 * of query_encoder. The plugin library (libpar_plugins.so) is needed for engines exported
 * with --plugin and is registered explicitly, so a missing library is a clear error.
 */
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace
{

class Logger : public nvinfer1::ILogger
{
    void log(Severity severity, char const* message) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::fprintf(stderr, "[TensorRT] %s\n", message);
        }
    }
};

int fail(std::string const& message)
{
    std::fprintf(stderr, "run_vision_par: %s\n", message.c_str());
    return 1;
}

size_t elementSize(nvinfer1::DataType type)
{
    switch (type)
    {
    case nvinfer1::DataType::kHALF:
    case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kINT8:
    case nvinfer1::DataType::kBOOL:
    case nvinfer1::DataType::kUINT8: return 1;
    default: return 4;
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        return fail("usage: run_vision_par ENGINE [PLUGIN_LIBRARY] [BUDGET]");
    }
    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime{nvinfer1::createInferRuntime(logger)};
    if (argc > 2 && runtime->getPluginRegistry().loadLibrary(argv[2]) == nullptr)
    {
        return fail(std::string("cannot load plugin library ") + argv[2] + " (build it: par-export plugin build)");
    }
    std::ifstream file(argv[1], std::ios::binary);
    if (!file)
    {
        return fail(std::string("cannot read engine ") + argv[1]);
    }
    std::vector<char> blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    std::unique_ptr<nvinfer1::ICudaEngine> engine{runtime->deserializeCudaEngine(blob.data(), blob.size())};
    if (!engine)
    {
        return fail("TensorRT could not deserialize the engine (other GPU or TensorRT version? see manifest.json)");
    }
    std::unique_ptr<nvinfer1::IExecutionContext> context{engine->createExecutionContext()};
    int64_t const budget = argc > 3 ? std::stoll(argv[3]) : 64;

    std::map<std::string, void*> buffers;
    std::map<std::string, std::vector<char>> host;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        if (engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT)
        {
            continue;
        }
        nvinfer1::Dims dims = engine->getTensorShape(name);
        for (int32_t d = 0; d < dims.nbDims; ++d)
        {
            dims.d[d] = dims.d[d] < 0 ? 1 : dims.d[d]; // batch 1
        }
        context->setInputShape(name, dims);
        size_t count = 1;
        for (int32_t d = 0; d < dims.nbDims; ++d)
        {
            count *= static_cast<size_t>(dims.d[d]);
        }
        std::vector<char> values(count * elementSize(engine->getTensorDataType(name)), 0);
        if (std::string(name) == "budget")
        {
            std::copy_n(reinterpret_cast<char const*>(&budget), sizeof(budget), values.begin());
        }
        void* device = nullptr;
        cudaMalloc(&device, values.size());
        cudaMemcpy(device, values.data(), values.size(), cudaMemcpyHostToDevice);
        context->setTensorAddress(name, device);
        buffers[name] = device;
    }
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        if (engine->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT)
        {
            continue;
        }
        nvinfer1::Dims const dims = context->getTensorShape(name);
        size_t count = 1;
        for (int32_t d = 0; d < dims.nbDims; ++d)
        {
            count *= static_cast<size_t>(dims.d[d]);
        }
        host[name].resize(count * elementSize(engine->getTensorDataType(name)));
        void* device = nullptr;
        cudaMalloc(&device, host[name].size());
        context->setTensorAddress(name, device);
        buffers[name] = device;
    }
    cudaStream_t stream;
    cudaStreamCreate(&stream);
    if (!context->enqueueV3(stream))
    {
        return fail("enqueueV3 failed");
    }
    cudaStreamSynchronize(stream);
    for (auto& [name, bytes] : host)
    {
        cudaMemcpy(bytes.data(), buffers[name], bytes.size(), cudaMemcpyDeviceToHost);
    }
    int64_t const kept = *reinterpret_cast<int64_t const*>(host["num_kept"].data());
    std::printf("num_kept: %lld\n", static_cast<long long>(kept));
    if (engine->getTensorDataType("image_embeds") == nvinfer1::DataType::kFLOAT)
    {
        auto const* embeds = reinterpret_cast<float const*>(host["image_embeds"].data());
        std::printf("image_embeds[0][:4]: %f %f %f %f\n", embeds[0], embeds[1], embeds[2], embeds[3]);
    }
    for (auto& [name, device] : buffers)
    {
        cudaFree(device);
    }
    cudaStreamDestroy(stream);
    return 0;
}
