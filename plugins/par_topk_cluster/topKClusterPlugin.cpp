/*
 * SPDX-License-Identifier: Apache-2.0
 */
#include "topKClusterPlugin.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

using namespace nvinfer1;

namespace par
{
namespace plugin
{
namespace
{

// Inputs: tokens [B,N,D], scores [B,N], relevance [B,N], num_kept [B], and optionally
// cluster_tokens [B,N,Dc] (the same tokens in the space routing compares them in).
// Outputs: merged [B,k_max,D], keep_index [B,k_max], assignment [B,N], num_kept [B].
constexpr int32_t kNB_INPUTS = 4;
constexpr int32_t kMAX_INPUTS = 5;
constexpr int32_t kNB_OUTPUTS = 4;
constexpr int32_t kIN_TOKENS = 0;
constexpr int32_t kIN_NUM_KEPT = 3;
constexpr int32_t kIN_CLUSTER = 4;

bool validInputCount(int32_t nbInputs)
{
    return nbInputs == kNB_INPUTS || nbInputs == kMAX_INPUTS;
}

class LoggerFinder
{
public:
    void set(ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        if (mFinder == nullptr && finder != nullptr)
        {
            mFinder = finder;
        }
    }

    ILogger* logger()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mFinder != nullptr ? mFinder->findLogger() : nullptr;
    }

private:
    ILoggerFinder* mFinder{nullptr};
    std::mutex mMutex;
};

LoggerFinder gLoggerFinder;

void log(ILogger::Severity severity, std::string const& message) noexcept
{
    std::string const text = std::string("par::TopKCluster: ") + message;
    ILogger* logger = gLoggerFinder.logger();
    if (logger != nullptr)
    {
        logger->log(severity, text.c_str());
    }
    else if (severity <= ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "%s\n", text.c_str());
    }
}

void logError(std::string const& message) noexcept
{
    log(ILogger::Severity::kERROR, message);
}

bool isTokenType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

bool isIndexType(DataType type)
{
    return type == DataType::kINT32 || type == DataType::kINT64;
}

std::string fieldString(PluginField const& field)
{
    std::string value(static_cast<char const*>(field.data), static_cast<size_t>(field.length));
    return value.substr(0, value.find('\0'));
}

} // namespace

bool parseAttributes(PluginFieldCollection const* fc, TopKClusterAttributes& attributes) noexcept
{
    if (fc == nullptr)
    {
        return true;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        std::string const name = field.name != nullptr ? field.name : "";
        if (field.data == nullptr || field.length < 1)
        {
            continue;
        }
        if (name == "k_max")
        {
            if (field.type == PluginFieldType::kINT32)
            {
                attributes.kMax = *static_cast<int32_t const*>(field.data);
            }
            else if (field.type == PluginFieldType::kINT64)
            {
                attributes.kMax = static_cast<int32_t>(*static_cast<int64_t const*>(field.data));
            }
            else
            {
                logError("attribute k_max must be an int32 or int64 field");
                return false;
            }
        }
        else if (name == "gamma" || name == "tau")
        {
            float value = 0.F;
            if (field.type == PluginFieldType::kFLOAT32)
            {
                value = *static_cast<float const*>(field.data);
            }
            else if (field.type == PluginFieldType::kFLOAT64)
            {
                value = static_cast<float>(*static_cast<double const*>(field.data));
            }
            else
            {
                logError("attribute " + name + " must be a float32 or float64 field");
                return false;
            }
            (name == "gamma" ? attributes.gamma : attributes.tau) = value;
        }
        else if (name == "router")
        {
            if (field.type == PluginFieldType::kCHAR)
            {
                std::string const router = fieldString(field);
                if (router != "merge" && router != "keep")
                {
                    logError("attribute router must be 'merge' or 'keep', got '" + router + "'");
                    return false;
                }
                attributes.router = router == "keep" ? RouterMode::kKEEP : RouterMode::kMERGE;
            }
            else if (field.type == PluginFieldType::kINT32)
            {
                int32_t const router = *static_cast<int32_t const*>(field.data);
                if (router != 0 && router != 1)
                {
                    logError("attribute router must be 0 (merge) or 1 (keep), got " + std::to_string(router));
                    return false;
                }
                attributes.router = static_cast<RouterMode>(router);
            }
            else
            {
                logError("attribute router must be a string ('merge'/'keep') or an int32 (0/1)");
                return false;
            }
        }
        else if (name != "plugin_version" && name != "plugin_namespace")
        {
            log(ILogger::Severity::kWARNING, "ignoring unknown attribute '" + name + "'");
        }
    }
    if (attributes.kMax < 1)
    {
        logError("attribute k_max must be >= 1, got " + std::to_string(attributes.kMax));
        return false;
    }
    if (!(attributes.tau > 0.F) || !std::isfinite(attributes.tau))
    {
        logError("attribute tau must be a finite value > 0, got " + std::to_string(attributes.tau));
        return false;
    }
    if (!std::isfinite(attributes.gamma))
    {
        logError("attribute gamma must be finite");
        return false;
    }
    return true;
}

TopKClusterPlugin::TopKClusterPlugin(TopKClusterAttributes const& attributes)
    : mAttributes(attributes)
{
}

IPluginCapability* TopKClusterPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* TopKClusterPlugin::clone() noexcept
{
    auto* copy = new (std::nothrow) TopKClusterPlugin(mAttributes);
    if (copy != nullptr)
    {
        copy->setPluginNamespace(mNamespace.c_str());
    }
    return copy;
}

char const* TopKClusterPlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* TopKClusterPlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* TopKClusterPlugin::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

void TopKClusterPlugin::setPluginNamespace(char const* pluginNamespace) noexcept
{
    mNamespace = pluginNamespace != nullptr ? pluginNamespace : "";
}

int32_t TopKClusterPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t TopKClusterPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 4 or 5 inputs (tokens, scores, relevance, num_kept[, cluster_tokens]) and 4 outputs, got "
            + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
        return -1;
    }
    if (!isTokenType(inputTypes[kIN_TOKENS]) || !isIndexType(inputTypes[kIN_NUM_KEPT]))
    {
        logError("tokens must be float32/float16/bfloat16 and num_kept int32/int64");
        return -1;
    }
    if (nbInputs == kMAX_INPUTS && inputTypes[kIN_CLUSTER] != inputTypes[kIN_TOKENS])
    {
        logError("cluster_tokens must have the type of tokens");
        return -1;
    }
    outputTypes[0] = inputTypes[kIN_TOKENS];
    outputTypes[1] = outputTypes[2] = outputTypes[3] = inputTypes[kIN_NUM_KEPT];
    return 0;
}

int32_t TopKClusterPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 4 or 5 inputs and 4 outputs");
        return -1;
    }
    int32_t const ranks[kMAX_INPUTS] = {3, 2, 2, 1, 3};
    char const* names[kMAX_INPUTS]
        = {"tokens [B, N, D]", "scores [B, N]", "relevance [B, N]", "num_kept [B]", "cluster_tokens [B, N, Dc]"};
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        if (inputs[i].nbDims != ranks[i])
        {
            logError(std::string("input ") + std::to_string(i) + " must be " + names[i] + ", got rank "
                + std::to_string(inputs[i].nbDims));
            return -1;
        }
    }
    IDimensionExpr const* n = inputs[kIN_TOKENS].d[1];
    if (n->isConstant() && (n->getConstantValue() < 2 || n->getConstantValue() > kMAX_TOKENS))
    {
        logError("N (tokens per image) must be in [2, " + std::to_string(kMAX_TOKENS) + "], got "
            + std::to_string(n->getConstantValue()));
        return -1;
    }
    for (int32_t i : {1, 2, kIN_CLUSTER})
    {
        if (i >= nbInputs)
        {
            continue;
        }
        IDimensionExpr const* other = inputs[i].d[1];
        if (n->isConstant() && other->isConstant() && other->getConstantValue() != n->getConstantValue())
        {
            logError(std::string(names[i]) + " has N=" + std::to_string(other->getConstantValue())
                + " but tokens have N=" + std::to_string(n->getConstantValue()));
            return -1;
        }
    }
    IDimensionExpr const* batch = inputs[kIN_TOKENS].d[0];
    IDimensionExpr const* kMax = exprBuilder.constant(mAttributes.kMax);
    outputs[0].nbDims = 3;
    outputs[0].d[0] = batch;
    outputs[0].d[1] = kMax;
    outputs[0].d[2] = inputs[kIN_TOKENS].d[2];
    outputs[1].nbDims = 2;
    outputs[1].d[0] = batch;
    outputs[1].d[1] = kMax;
    outputs[2].nbDims = 2;
    outputs[2].d[0] = batch;
    outputs[2].d[1] = n;
    outputs[3].nbDims = 1;
    outputs[3].d[0] = batch;
    return 0;
}

bool TopKClusterPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != kNB_OUTPUTS || pos < 0 || pos >= nbInputs + kNB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == nbInputs) // merged: the tokens' type
    {
        return desc.type == inOut[kIN_TOKENS].desc.type;
    }
    switch (pos)
    {
    case 0: return isTokenType(desc.type);
    case 1:
    case 2: return desc.type == DataType::kFLOAT;
    case 3: return isIndexType(desc.type);
    case kIN_CLUSTER:
        if (nbInputs == kMAX_INPUTS) // cluster_tokens: the tokens' type
        {
            return desc.type == inOut[kIN_TOKENS].desc.type;
        }
        return desc.type == inOut[kIN_NUM_KEPT].desc.type;
    default: return desc.type == inOut[kIN_NUM_KEPT].desc.type;
    }
}

int32_t TopKClusterPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != kNB_OUTPUTS)
    {
        logError("expects 4 or 5 inputs and 4 outputs");
        return -1;
    }
    mHasClusterTokens = nbInputs == kMAX_INPUTS;
    int64_t const maxTokens = in[kIN_TOKENS].max.d[1];
    if (maxTokens > kMAX_TOKENS || in[kIN_TOKENS].min.d[1] < 2)
    {
        logError("N (tokens per image) must stay in [2, " + std::to_string(kMAX_TOKENS) + "] in every profile, got up to "
            + std::to_string(maxTokens));
        return -1;
    }
    return 0;
}

size_t TopKClusterPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return topKClusterWorkspaceSize(
        static_cast<int32_t>(inputs[kIN_TOKENS].max.d[0]), static_cast<int32_t>(inputs[kIN_TOKENS].max.d[1]));
}

int32_t TopKClusterPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    if (!validInputCount(nbInputs) || nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    mHasClusterTokens = nbInputs == kMAX_INPUTS;
    int64_t const n = in[kIN_TOKENS].dims.d[1];
    if (n < 2 || n > kMAX_TOKENS)
    {
        logError("N (tokens per image) must be in [2, " + std::to_string(kMAX_TOKENS) + "], got " + std::to_string(n));
        return -1;
    }
    return 0;
}

int32_t TopKClusterPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    Dims const& dims = inputDesc[kIN_TOKENS].dims;
    // onShapeChange (called before every enqueue with new shapes) recorded whether a 5th input exists
    void const* clusterTokens = mHasClusterTokens ? inputs[kIN_CLUSTER] : nullptr;
    int32_t const routeDim = static_cast<int32_t>(mHasClusterTokens ? inputDesc[kIN_CLUSTER].dims.d[2] : dims.d[2]);
    TopKClusterParams const params{static_cast<int32_t>(dims.d[0]), static_cast<int32_t>(dims.d[1]),
        static_cast<int32_t>(dims.d[2]), mAttributes.kMax, mAttributes.gamma, mAttributes.tau, mAttributes.router,
        routeDim};
    DataType const tokenType = inputDesc[kIN_TOKENS].type;
    TokenType const tokens = tokenType == DataType::kHALF
        ? TokenType::kFLOAT16
        : (tokenType == DataType::kBF16 ? TokenType::kBFLOAT16 : TokenType::kFLOAT32);
    IndexType const index = inputDesc[kIN_NUM_KEPT].type == DataType::kINT64 ? IndexType::kINT64 : IndexType::kINT32;
    cudaError_t const status = launchTopKCluster(params, tokens, index, inputs[0], static_cast<float const*>(inputs[1]),
        static_cast<float const*>(inputs[2]), inputs[3], clusterTokens, outputs[0], outputs[1], outputs[2], outputs[3],
        workspace, stream);
    if (status != cudaSuccess)
    {
        logError(std::string("kernel launch failed: ") + cudaGetErrorString(status));
        return -1;
    }
    return 0;
}

IPluginV3* TopKClusterPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

PluginFieldCollection const* TopKClusterPlugin::getFieldsToSerialize() noexcept
{
    mRouterField = static_cast<int32_t>(mAttributes.router);
    mSerializedFields = {
        PluginField("k_max", &mAttributes.kMax, PluginFieldType::kINT32, 1),
        PluginField("gamma", &mAttributes.gamma, PluginFieldType::kFLOAT32, 1),
        PluginField("tau", &mAttributes.tau, PluginFieldType::kFLOAT32, 1),
        PluginField("router", &mRouterField, PluginFieldType::kINT32, 1),
    };
    mSerialized.nbFields = static_cast<int32_t>(mSerializedFields.size());
    mSerialized.fields = mSerializedFields.data();
    return &mSerialized;
}

TopKClusterPluginCreator::TopKClusterPluginCreator()
{
    mFields = {
        PluginField("k_max", nullptr, PluginFieldType::kINT32, 1),
        PluginField("gamma", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("tau", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("router", nullptr, PluginFieldType::kCHAR, 0),
    };
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* TopKClusterPluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* TopKClusterPluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* TopKClusterPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* TopKClusterPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* TopKClusterPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    TopKClusterAttributes attributes;
    if (!parseAttributes(fc, attributes))
    {
        logError(std::string("cannot create layer '") + (name != nullptr ? name : "") + "': invalid attributes");
        return nullptr;
    }
    return new (std::nothrow) TopKClusterPlugin(attributes);
}

} // namespace plugin
} // namespace par

extern "C" void setLoggerFinder(ILoggerFinder* finder)
{
    par::plugin::gLoggerFinder.set(finder);
}

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static par::plugin::TopKClusterPluginCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
