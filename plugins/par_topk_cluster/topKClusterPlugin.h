/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * par::TopKCluster as a TensorRT IPluginV3 (name "TopKCluster", namespace "par",
 * version "1"), and its IPluginCreatorV3One.
 */
#pragma once

#include "topKClusterKernel.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace par
{
namespace plugin
{

constexpr char const* kPLUGIN_NAME = "TopKCluster";
constexpr char const* kPLUGIN_VERSION = "1";
constexpr char const* kPLUGIN_NAMESPACE = "par";

//! Attributes; the ONNX node's k_max, gamma, tau and router.
struct TopKClusterAttributes
{
    int32_t kMax{192};
    float gamma{1.F};
    float tau{1.F};
    RouterMode router{RouterMode::kMERGE};
};

class TopKClusterPlugin : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit TopKClusterPlugin(TopKClusterAttributes const& attributes);
    ~TopKClusterPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    void setPluginNamespace(char const* pluginNamespace) noexcept;

private:
    TopKClusterAttributes mAttributes;
    bool mHasClusterTokens{false}; //!< a 5th input, cluster_tokens [B, N, Dc], gives routing's similarities
    std::string mNamespace{kPLUGIN_NAMESPACE};
    int32_t mRouterField{0};
    std::vector<nvinfer1::PluginField> mSerializedFields;
    nvinfer1::PluginFieldCollection mSerialized{};
};

class TopKClusterPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    TopKClusterPluginCreator();
    ~TopKClusterPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Parses and validates the attributes; on failure logs why (naming the field and
//! the accepted range) and returns false.
bool parseAttributes(nvinfer1::PluginFieldCollection const* fc, TopKClusterAttributes& attributes) noexcept;

} // namespace plugin
} // namespace par

//! Entry points of libpar_plugins.so for IPluginRegistry::loadLibrary and
//! `trtexec --dynamicPlugins`: no TensorRT symbol is left undefined.
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
